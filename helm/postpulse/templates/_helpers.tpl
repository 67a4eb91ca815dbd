{{- define "postpulse.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "postpulse.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "postpulse.labels" -}}
app.kubernetes.io/name: {{ include "postpulse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "postpulse.selector" -}}
app.kubernetes.io/name: {{ include "postpulse.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* the image of a component: workers use the GPU tag when gpu.enabled */}}
{{- define "postpulse.image" -}}
{{- $tag := ternary .root.Values.image.gpuTag .root.Values.image.tag (and .gpu .root.Values.gpu.enabled) -}}
{{- printf "%s:%s" .root.Values.image.repository $tag -}}
{{- end -}}

{{- define "postpulse.apiTokenSecret" -}}
{{- default (printf "%s-api" (include "postpulse.fullname" .)) .Values.api.tokenSecret -}}
{{- end -}}

{{/* environment shared by every container: settings from the ConfigMap, secrets by reference */}}
{{- define "postpulse.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "postpulse.fullname" . }}
env:
  - name: POD_NAME
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
  {{- if .Values.kafka.saslPasswordSecret }}
  - name: POSTPULSE_KAFKA_SASL_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ .Values.kafka.saslPasswordSecret }}
        key: password
  {{- end }}
  {{- if .Values.milvus.tokenSecret }}
  - name: POSTPULSE_MILVUS_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ .Values.milvus.tokenSecret }}
        key: token
  {{- end }}
{{- end -}}

{{- define "postpulse.volumeMounts" -}}
- name: state
  mountPath: /var/lib/postpulse
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.tlsSecret }}
- name: kafka-tls
  mountPath: /etc/postpulse/kafka-tls
  readOnly: true
{{- end }}
{{- if .Values.bundle.existingClaim }}
- name: models
  mountPath: /models
  readOnly: true
{{- end }}
{{- end -}}

{{- define "postpulse.volumes" -}}
- name: state
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- if .Values.kafka.tlsSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tlsSecret }}
{{- end }}
{{- if .Values.bundle.existingClaim }}
- name: models
  persistentVolumeClaim:
    claimName: {{ .Values.bundle.existingClaim }}
    readOnly: true
{{- end }}
{{- end -}}

{{- define "postpulse.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 5
  failureThreshold: 60
livenessProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 15
  failureThreshold: 4
readinessProbe:
  httpGet: {path: {{ .ready | default "/healthz" }}, port: {{ .port }}}
  periodSeconds: 10
{{- end -}}
