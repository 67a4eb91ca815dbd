'use strict';
// s3rver (npm, 3.7.1) with the three behaviours of S3 that tansu's s3:// storage engine
// relies on and s3rver lacks (docs/decisions.md, "The durable local broker"):
//
// 1. Conditional writes. tansu keeps each partition's next offset in watermark.json and
//    writes it with If-None-Match: * (when it has not read it yet, as after a restart) or
//    If-Match: <etag>; on 412 it reads the object and tries again. s3rver ignores both
//    headers, so a restarted broker overwrote the watermark with offset 0 and then the
//    log's first batches. Here a PUT carrying either header is checked against the stored
//    object, one at a time per key, and refused with 412 PreconditionFailed as S3 does.
// 2. Listing times finer than a second. tansu answers ListOffsets(latest) with the
//    listed batch object modified last; s3rver lists LastModified to the second, so most
//    batches tie and the answer is an early one. Here listed objects carry their file's
//    modification time in nanoseconds.
// 3. Atomic uploads. s3rver streams a PUT's body into the object's file, truncating it
//    first; a broker stopped in the middle of a PUT left an empty batch object that every
//    later fetch of that partition failed on. Here the body is read whole, written to a
//    temporary file and renamed over the object: an interrupted upload stores nothing.
//
// usage: node s3rver_strict.js ADDRESS PORT DIRECTORY BUCKET (NODE_PATH: s3rver's
// node_modules)

const crypto = require('crypto');
const fs = require('fs/promises');
const path = require('path');
const S3rver = require('s3rver');
const S3Error = require('s3rver/lib/models/error');
const S3Object = require('s3rver/lib/models/object');
const FilesystemStore = require('s3rver/lib/stores/filesystem');

const [address, port, directory, bucket] = process.argv.slice(2);
if (!bucket) {
  console.error('usage: s3rver_strict.js ADDRESS PORT DIRECTORY BUCKET');
  process.exit(2);
}

// -- 2. listing: each object's modification time to the nanosecond. Metadata is kept
// in memory once read (tansu lists a whole partition on every fetch: without the cache
// each listed object cost four file reads), refreshed by every write and delete.
const MTIME_NS = Symbol('mtimeNs');
const cache = new Map(); // object file path -> { metadata, mtimeNs }
const readMetadata = FilesystemStore.prototype.getMetadata;
async function loadMetadata(store, name, key) {
  const file = store.getResourcePath(name, key, 'object');
  const [metadata, stat] = await Promise.all([
    readMetadata.call(store, name, key),
    fs.stat(file, { bigint: true }),
  ]);
  const entry = { metadata, mtimeNs: stat.mtimeNs };
  cache.set(file, entry);
  return entry;
}
async function cachedMetadata(store, name, key) {
  return cache.get(store.getResourcePath(name, key, 'object')) || loadMetadata(store, name, key);
}
FilesystemStore.prototype.getMetadata = async function getMetadataCached(name, key) {
  return { ...(await cachedMetadata(this, name, key)).metadata };
};
const putMetadata = FilesystemStore.prototype.putMetadata;
FilesystemStore.prototype.putMetadata = async function putMetadataUncached(name, key, ...rest) {
  cache.delete(this.getResourcePath(name, key, 'object'));
  return putMetadata.call(this, name, key, ...rest);
};
const deleteObject = FilesystemStore.prototype.deleteObject;
FilesystemStore.prototype.deleteObject = async function deleteObjectUncached(name, key) {
  cache.delete(this.getResourcePath(name, key, 'object'));
  return deleteObject.call(this, name, key);
};
const listObjects = FilesystemStore.prototype.listObjects;
FilesystemStore.prototype.listObjects = async function listObjectsNs(name, options) {
  const result = await listObjects.call(this, name, options);
  for (const object of result.objects) {
    const entry = cache.get(this.getResourcePath(name, object.key, 'object'));
    if (entry) object[MTIME_NS] = entry.mtimeNs;
  }
  return result;
};
const secondsDate = Object.getOwnPropertyDescriptor(
  S3Object.prototype,
  'lastModifiedDate',
).get;
Object.defineProperty(S3Object.prototype, 'lastModifiedDate', {
  get() {
    const ns = this[MTIME_NS];
    if (ns === undefined) return secondsDate.call(this);
    const date = new Date(Number(ns / 1000000n));
    const fraction = (ns % 1000000000n).toString().padStart(9, '0');
    const iso = date.toISOString().replace(/\.\d{3}Z$/, `.${fraction}Z`);
    date.toISOString = () => iso;
    return date;
  },
});

// -- 3. atomic uploads
const BODY = Symbol('body');
function readWhole(content) {
  if (Buffer.isBuffer(content)) return Promise.resolve(content);
  if (content[BODY]) return Promise.resolve(content[BODY]);
  if (content.destroyed || content.readableEnded) {
    return Promise.reject(new Error('upload interrupted'));
  }
  return new Promise((resolve, reject) => {
    const chunks = [];
    let ended = false;
    content.on('data', chunk => chunks.push(chunk));
    content.on('end', () => {
      ended = true;
      content[BODY] = Buffer.concat(chunks);
      resolve(content[BODY]);
    });
    content.on('error', reject);
    content.on('close', () => {
      if (!ended) reject(new Error('upload interrupted'));
    });
  });
}
let uploads = 0;
FilesystemStore.prototype.putObject = async function putObjectAtomic(object) {
  const body = await readWhole(object.content);
  const objectPath = this.getResourcePath(object.bucket, object.key, 'object');
  await fs.mkdir(path.dirname(objectPath), { recursive: true });
  const md5 = crypto.createHash('md5').update(body).digest('hex');
  const partial = `${objectPath}.${process.pid}.${(uploads += 1)}.partial`;
  await fs.writeFile(partial, body);
  await fs.rename(partial, objectPath);
  await this.putMetadata(object.bucket, object.key, object.metadata, md5);
  await loadMetadata(this, object.bucket, object.key);
  return { size: body.length, md5 };
};

// -- 1. conditional writes
const unquote = etag => String(etag).replace(/^W\//, '').replace(/"/g, '');
const failed = condition =>
  new S3Error(
    'PreconditionFailed',
    'At least one of the pre-conditions you specified did not hold',
    { Condition: condition },
  );
const tails = new Map(); // key path -> the last conditional write queued on it

async function checkAndPut(ctx, next, name, key) {
  const ifMatch = ctx.get('if-match');
  const ifNoneMatch = ctx.get('if-none-match');
  const etag = await ctx.store.getMetadata(name, key).then(
    metadata => metadata.etag,
    err => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    },
  );
  if (ifNoneMatch === '*' && etag !== undefined) throw failed('If-None-Match');
  if (ifMatch) {
    if (etag === undefined) {
      throw new S3Error('NoSuchKey', 'The specified key does not exist.', { Key: key });
    }
    if (ifMatch !== '*' && unquote(ifMatch) !== unquote(etag)) throw failed('If-Match');
  }
  await next();
}

async function conditionalWrites(ctx, next) {
  const conditional = ctx.get('if-match') || ctx.get('if-none-match');
  if (ctx.method !== 'PUT' || !conditional || 'uploadId' in ctx.query) return next();
  const [, name, ...parts] = ctx.path.split('/');
  const key = decodeURIComponent(parts.join('/'));
  if (!name || !key) return next();
  // the body is read before waiting in line: a client that gives up while it waits
  // must not leave a stream that never ends at the head of the line
  await readWhole(ctx.req);
  const previous = tails.get(ctx.path) || Promise.resolve();
  // and no write holds the line for more than 20 s (tansu's client waits 30 s)
  const turn = Promise.race([
    previous.catch(() => {}),
    new Promise(resolve => setTimeout(resolve, 20000).unref()),
  ]);
  const mine = turn.then(() => checkAndPut(ctx, next, name, key));
  tails.set(ctx.path, mine);
  try {
    await mine;
  } finally {
    if (tails.get(ctx.path) === mine) tails.delete(ctx.path);
  }
}

const server = new S3rver({
  address,
  port: Number(port),
  directory,
  configureBuckets: [{ name: bucket }],
});
// after the virtual-host rewrite (the path is /bucket/key), before the router
const router = server.middleware.length - 1;
server.middleware.splice(router, 0, conditionalWrites);
server.run().then(
  ({ address: host, port: bound }) => {
    // tansu's HTTP client keeps connections for 90 s; Node closes idle ones after 5 s, and
    // a request sent on a connection as it closes fails with "connection reset"
    server.httpServer.keepAliveTimeout = 120000;
    server.httpServer.headersTimeout = 121000;
    console.log(`S3rver (strict) listening on ${host}:${bound}`);
  },
  err => {
    console.error(err);
    process.exit(1);
  },
);
