"""Offline: data sets, the embedding cache, the fusion model, training and evaluation.

These modules import PyTorch; the stream worker never imports them.
"""
