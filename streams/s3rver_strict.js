'use strict';
// s3rver (npm, 3.7.1) with the three behaviours of S3 that tansu's s3:// storage engine
// relies on and s3rver lacks, and listings whose cost does not grow with the bucket (4.)
// (docs/decisions.md, "The durable local broker"):
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
const LISTED_DATE = Symbol('listedDate');
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
  indexed(name, key, false);
  return deleteObject.call(this, name, key);
};

// -- 4. listing from a sorted key index. s3rver lists by walking the bucket's folders
// with a synchronous stat of every file (three per object) and filters the keys after,
// once per page of 1,000; tansu lists a partition's whole records/ prefix on every
// fetch, so a fetch cost O(objects^2 / 1000) stats and a 6,000-object partition was read
// at ~1.6 records/s (benchmarks/durable_broker.py, log growth). Here each bucket's keys
// are walked once, on its first listing, and kept sorted in memory; a write adds its key
// once the object and its metadata are stored (a listing never shows half a write), a
// delete removes it. A page is a binary search for its start and a scan of its keys.
const OBJECT_SUFFIX = '._S3rver_object';
const indexes = new Map(); // bucket name -> sorted array of keys
function firstAbove(keys, bound, inclusive) {
  let low = 0;
  let high = keys.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (keys[middle] < bound || (!inclusive && keys[middle] === bound)) low = middle + 1;
    else high = middle;
  }
  return low;
}
async function walkKeys(root, relative, keys) {
  let entries;
  try {
    entries = await fs.readdir(path.join(root, relative), { withFileTypes: true });
  } catch (err) {
    if (err.code === 'ENOENT') return;
    throw err;
  }
  for (const entry of entries) {
    const child = relative ? `${relative}/${entry.name}` : entry.name;
    if (entry.isDirectory()) await walkKeys(root, child, keys);
    else if (entry.name.endsWith(OBJECT_SUFFIX)) {
      keys.push(FilesystemStore.decodeKeyPath(child.slice(0, -OBJECT_SUFFIX.length)));
    }
  }
}
const building = new Map(); // bucket name -> the walk in progress
async function keyIndex(store, name) {
  if (indexes.has(name)) return indexes.get(name);
  if (!building.has(name)) {
    const keys = [];
    building.set(
      name,
      walkKeys(store.getBucketPath(name), '', keys).then(() => {
        keys.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
        // writes that finished during the walk went to `pending`, not to the index
        for (const [key, present] of pending.get(name) || []) place(keys, key, present);
        pending.delete(name);
        indexes.set(name, keys);
        building.delete(name);
        return keys;
      }, err => {
        // a walk that failed is not kept: the next listing walks again
        building.delete(name);
        pending.delete(name);
        throw err;
      }),
    );
  }
  return building.get(name);
}
const pending = new Map(); // bucket name -> [[key, present]] while its index is built
function indexed(name, key, present) {
  const keys = indexes.get(name);
  if (!keys) {
    if (building.has(name)) {
      if (!pending.has(name)) pending.set(name, []);
      pending.get(name).push([key, present]);
    }
    return;
  }
  place(keys, key, present);
}
// a key into (present) or out of a sorted array of keys
function place(keys, key, present) {
  const at = firstAbove(keys, key, true);
  if (present && keys[at] !== key) keys.splice(at, 0, key);
  if (!present && keys[at] === key) keys.splice(at, 1);
}
FilesystemStore.prototype.listObjects = async function listObjectsIndexed(name, options) {
  const { delimiter = '', startAfter = '', prefix = '', maxKeys = Infinity } = options;
  const keys = await keyIndex(this, name);
  const start = Math.max(firstAbove(keys, startAfter, false), firstAbove(keys, prefix, true));
  const commonPrefixes = new Set();
  const found = [];
  let isTruncated = false;
  for (let at = start; at < keys.length && keys[at].startsWith(prefix); at += 1) {
    const key = keys[at];
    if (delimiter) {
      const cut = key.indexOf(delimiter, prefix.length);
      if (cut !== -1) {
        commonPrefixes.add(key.slice(0, cut + delimiter.length));
        continue;
      }
    }
    if (found.length >= maxKeys) {
      isTruncated = true;
      break;
    }
    found.push(key);
  }
  // metadata of keys not listed since their last write is read once; each entry keeps
  // the S3Object built for it (s3rver builds one per listed key per page with lodash,
  // the largest cost of a page), and nothing downstream changes it
  const entries = found.map(key => cache.get(this.getResourcePath(name, key, 'object')));
  await Promise.all(
    entries.map((entry, at) =>
      entry
        ? undefined
        : loadMetadata(this, name, found[at]).then(
            loaded => {
              entries[at] = loaded;
            },
            err => {
              if (err.code !== 'ENOENT') throw err; // deleted since
            },
          ),
    ),
  );
  const objects = [];
  entries.forEach((entry, at) => {
    if (entry === undefined) return;
    if (!entry.listed) {
      entry.listed = new S3Object(name, found[at], null, entry.metadata);
      entry.listed[MTIME_NS] = entry.mtimeNs;
    }
    objects.push(entry.listed);
  });
  return { objects, commonPrefixes: [...commonPrefixes].sort(), isTruncated };
};
const deleteBucket = FilesystemStore.prototype.deleteBucket;
FilesystemStore.prototype.deleteBucket = async function deleteBucketUnindexed(name) {
  indexes.delete(name);
  return deleteBucket.call(this, name);
};
const copyObject = FilesystemStore.prototype.copyObject;
FilesystemStore.prototype.copyObject = async function copyObjectIndexed(...args) {
  const [, , destBucket, destKey] = args;
  cache.delete(this.getResourcePath(destBucket, destKey, 'object'));
  const result = await copyObject.apply(this, args);
  indexed(destBucket, destKey, true);
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
    if (this[LISTED_DATE]) return this[LISTED_DATE];
    const date = new Date(Number(ns / 1000000n));
    const fraction = (ns % 1000000000n).toString().padStart(9, '0');
    const iso = date.toISOString().replace(/\.\d{3}Z$/, `.${fraction}Z`);
    date.toISOString = () => iso;
    this[LISTED_DATE] = date;
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
  indexed(object.bucket, object.key, true);
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
// warnings and errors only: s3rver logs three lines per request at info and debug,
// which cost a quarter of a partition listing's time
for (const transport of server.logger.transports) transport.level = 'warn';
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
