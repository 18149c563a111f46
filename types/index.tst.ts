// Type tests (tstyche): what TypeScript users of the plugin can rely on.
import Fastify, { type FastifyRequest } from 'fastify'
import { describe, expect, test } from 'tstyche'
import chunkedUpload, {
  MemoryWriter, TmpFileBudget, TmpFileWriter, defineWriter, errors,
  type CloseReason, type DiscardInfo, type RequestUploads, type TmpFileMeta, type UploadEntry, type UploadError, type UploadWriter, type WriterSnapshot
} from '../lib/index.js'

describe('defineWriter', () => {
  test('infers options, state and meta from the callbacks', () => {
    const EchoWriter = defineWriter({
      init (opts: { level: 'info' | 'debug' }) { return { total: 0, level: opts.level } },
      meta (state) { return { level: state.level, total: state.total } },
      writeChunk (data, state) { return { ...state, total: state.total + data.length } },
      close (state, _reason) { return state }
    })
    expect(EchoWriter).type.toBe<UploadWriter<{ level: 'info' | 'debug' }, { total: number, level: 'info' | 'debug' }, { level: 'info' | 'debug', total: number }>>()
    expect(EchoWriter.writeChunk).type.not.toBeCallableWith('text', { total: 0, level: 'info' })
  })

  test('discard is told whether the entry was consumed; a writer may ignore it', () => {
    const Kept = defineWriter({
      init: () => ({ key: 'k' }),
      meta: (state) => state,
      writeChunk: (_data, state) => state,
      close: (state) => state,
      discard: (state, { consumed }) => { if (!consumed) state.key = '' }
    })
    expect(Kept.discard!).type.toBeCallableWith({ key: 'k' }, { consumed: false })
    expect<DiscardInfo>().type.toBe<{ readonly consumed: boolean }>()
    expect(defineWriter({ init: () => 1, meta: () => 1, writeChunk: (_d, s) => s, close: (s) => s, discard: (_state) => {} })).type.toBeAssignableTo<UploadWriter>()
  })

  test('close reasons are done, cancel or an error', () => {
    expect<CloseReason>().type.toBe<'done' | 'cancel' | { error: unknown }>()
  })

  test('the built-in writers are writers', () => {
    expect(TmpFileWriter).type.toBeAssignableTo<UploadWriter>()
    expect(TmpFileWriter.init).type.toBeCallableWith({ dir: '/tmp', budget: new TmpFileBudget(1_000_000) })
    expect(MemoryWriter).type.toBeAssignableTo<UploadWriter>()
    expect<ReturnType<typeof TmpFileWriter.meta>>().type.toBe<TmpFileMeta>()
  })

  test('read gives back what was stored, as buffers; both built-in writers have it', () => {
    const Readable = defineWriter({
      init: () => ({ chunks: [] as Buffer[] }),
      meta: (state) => state.chunks.length,
      writeChunk: (data, state) => { state.chunks.push(data); return state },
      close: (state) => state,
      async * read (state) { yield * state.chunks }
    })
    expect(Readable.read!).type.toBeCallableWith({ chunks: [] }, { signal: new AbortController().signal })
    expect(defineWriter).type.not.toBeCallableWith({ init: () => 1, meta: () => 1, writeChunk: (_d: Buffer, s: number) => s, close: (s: number) => s, read: () => ['text'] })
    expect(TmpFileWriter.read).type.not.toBe<undefined>()
    expect(MemoryWriter.read).type.not.toBe<undefined>()
  })
})

describe('checkpoint and restore', () => {
  // A writer whose state lives in another service: its snapshot names the object and the bytes stored.
  const Remote = defineWriter({
    init: (opts: { bucket: string }) => ({ bucket: opts.bucket, key: 'k', stored: 0 }),
    meta: (state) => ({ key: state.key }),
    writeChunk: (data, state) => ({ ...state, stored: state.stored + data.length }),
    close: (state) => state,
    checkpoint: async (state) => ({ offset: state.stored, key: state.key, parts: [{ n: 1, etag: 'e' }], tail: null }),
    restore: (snapshot, opts) => ({ bucket: opts.bucket, key: String(snapshot['key']), stored: snapshot.offset })
  })

  test('defineWriter still infers options, state and meta with them', () => {
    expect(Remote).type.toBe<UploadWriter<{ bucket: string }, { bucket: string, key: string, stored: number }, { key: string }>>()
    expect(Remote.restore!).type.toBeCallableWith({ offset: 10, key: 'k' }, { bucket: 'b' }, { signal: new AbortController().signal })
    expect(Remote.restore!).type.not.toBeCallableWith({ offset: 10, key: 'k' }, { bucket: 1 })
  })

  test('a snapshot is JSON with a numeric offset, which a store reads', () => {
    expect<WriterSnapshot['offset']>().type.toBe<number>()
    expect({ offset: 3, path: '/tmp/upload-x', parts: [1, 'two', { three: true }], none: null }).type.toBeAssignableTo<WriterSnapshot>()
    expect({ path: '/tmp/upload-x' }).type.not.toBeAssignableTo<WriterSnapshot>()
    expect({ offset: '3' }).type.not.toBeAssignableTo<WriterSnapshot>()
    // What JSON would not carry back as it was is refused: bytes, dates, functions, bigints.
    expect({ offset: 3, tail: Buffer.from('x') }).type.not.toBeAssignableTo<WriterSnapshot>()
    expect({ offset: 3, at: new Date() }).type.not.toBeAssignableTo<WriterSnapshot>()
    expect({ offset: 3, next: () => 4 }).type.not.toBeAssignableTo<WriterSnapshot>()
    expect({ offset: 3, big: 3n }).type.not.toBeAssignableTo<WriterSnapshot>()
  })

  test('a writer whose checkpoint returns no snapshot, or whose restore makes another state, is not a writer', () => {
    const base = { init: () => ({ n: 0 }), meta: (s: { n: number }) => s.n, writeChunk: (_d: Buffer, s: { n: number }) => s, close: (s: { n: number }) => s }
    expect(defineWriter).type.toBeCallableWith({ ...base, checkpoint: (s: { n: number }) => ({ offset: s.n }), restore: (snapshot: WriterSnapshot) => ({ n: snapshot.offset }) })
    expect(defineWriter).type.not.toBeCallableWith({ ...base, checkpoint: (s: { n: number }) => ({ size: s.n }) })
    expect(defineWriter).type.not.toBeCallableWith({ ...base, checkpoint: (s: { n: number }) => s.n })
    expect(defineWriter).type.not.toBeCallableWith({ ...base, restore: (snapshot: WriterSnapshot) => ({ count: snapshot.offset }) })
  })

  test('the temp-file writer has both, and an fsync option', () => {
    expect(TmpFileWriter.checkpoint).type.not.toBe<undefined>()
    expect(TmpFileWriter.restore!).type.toBeCallableWith({ offset: 0, path: '/tmp/upload-0' }, { dir: '/tmp', fsync: true })
    expect(TmpFileWriter.init).type.toBeCallableWith({ dir: '/tmp', fsync: true })
    expect(TmpFileWriter.init).type.not.toBeCallableWith({ dir: '/tmp', fsync: 'yes' })
  })
})

describe('the allowUpload route option', () => {
  const app = Fastify()
  app.register(chunkedUpload, { tmpDir: '/tmp', defaults: { chunkTimeout: 5000 } })

  test('is accepted on routes, with a typed config', () => {
    expect(app.post).type.toBeCallableWith('/p', {
      allowUpload: {
        avatar: {
          accept: ['.png', 'image/*'],
          maxEntries: 2,
          writer: (name: string, entry: UploadEntry, request: FastifyRequest) => [MemoryWriter, undefined] as const
        }
      }
    }, async () => 'ok')
    expect(app.post).type.not.toBeCallableWith('/p', { allowUpload: { avatar: { maxEntries: 2 } } }, async () => 'ok')
    // progress: the request that carries the bytes, undefined between a resumable upload's requests.
    expect(app.post).type.toBeCallableWith('/p', { allowUpload: { avatar: { accept: 'any', progress: (_name: string, _entry: UploadEntry, request: FastifyRequest | undefined) => { request?.log.info('progress') } } } }, async () => 'ok')
    expect(app.post).type.not.toBeCallableWith('/p', { allowUpload: { avatar: { accept: 'any', progress: (_name: string, _entry: UploadEntry, request: FastifyRequest) => { request.log.info('progress') } } } }, async () => 'ok')
    expect(app.post).type.toBeCallableWith('/p', { allowUpload: { video: { accept: ['video/*'], resumable: true } } }, async () => 'ok')
    expect(app.post).type.not.toBeCallableWith('/p', { allowUpload: { avatar: { accept: 'any', onEntryError: 'ignore' } } }, async () => 'ok')
  })

  test('plugin options are typed', () => {
    expect(app.register).type.not.toBeCallableWith(chunkedUpload, { tmpdir: '/tmp' })
    expect(app.register).type.toBeCallableWith(chunkedUpload, {
      channel: true, channelSuffix: '/ws', channelWindow: 16, entryTtl: 60_000, owner: (request: FastifyRequest) => request.headers['x-user'] as string | undefined
    })
    // Owners are strings (or nobody): a header that may be a list, or a number, is not one.
    expect(app.register).type.not.toBeCallableWith(chunkedUpload, { owner: (request: FastifyRequest) => request.headers['x-user'] })
    expect(app.register).type.not.toBeCallableWith(chunkedUpload, { owner: () => 42 })
    expect(app.register).type.toBeCallableWith(chunkedUpload, { owner: async () => null })
    expect(app.register).type.not.toBeCallableWith(chunkedUpload, { channel: 'yes' })
    expect(app.register).type.toBeCallableWith(chunkedUpload, { resumableSuffix: '/tus', resumableExpiry: 60_000, resumableMaxLifetime: 3_600_000 })
    expect(app.register).type.toBeCallableWith(chunkedUpload, { channelQueueBytes: 8_000_000, tmpFileQueueBytes: 32_000_000 })
    expect(app.register).type.not.toBeCallableWith(chunkedUpload, { channelQueueBytes: '8 MB' })
  })
})

describe('request.uploads', () => {
  test('is typed on every request', () => {
    expect<FastifyRequest['uploads']>().type.toBe<RequestUploads>()
  })

  test('consume returns what the callback returns, postponed or not', async () => {
    const uploads = {} as RequestUploads
    expect(await uploads.consume('a', (meta: TmpFileMeta) => meta.size)).type.toBe<number[]>()
    expect(await uploads.consume('a', () => ({ postpone: 'x' }))).type.toBe<string[]>()
    expect(await uploads.consumeEntry('ref', (_meta, entry) => entry.clientName)).type.toBe<string>()
    expect(uploads.errors()).type.toBe<UploadError[]>()
    expect(uploads.entries('a').completed[0]!.status).type.toBe<'pending' | 'uploading' | 'done' | 'cancelled' | 'failed'>()
  })

  test('emits entry events', () => {
    const uploads = {} as RequestUploads
    expect(uploads.on).type.toBeCallableWith('done', (entry: UploadEntry) => entry.ref)
    expect(uploads.on).type.not.toBeCallableWith('finished', (entry: UploadEntry) => entry.ref)
  })

  test('entries are read-only', () => {
    const entry = {} as UploadEntry
    // users read entries, they do not change them
    // @ts-expect-error Cannot assign to 'bytesReceived' because it is a read-only property
    entry.bytesReceived = 3
    expect(entry.bytesReceived).type.toBe<number>()
  })
})

describe('errors', () => {
  test('each error takes one argument per placeholder of its message, and an optional cause', () => {
    expect(errors.TooLargeError).type.toBeConstructableWith('a.bin', 'file', 1000)
    expect(errors.TooLargeError).type.toBeConstructableWith('a.bin', 'file', 1000, { cause: new Error('disk') })
    expect(errors.TooLargeError).type.not.toBeConstructableWith('a.bin', 'file')
    expect(errors.UnknownRefError).type.not.toBeConstructableWith({}, 'file')
    expect(errors.ShuttingDownError).type.toBeConstructableWith()
    expect(errors.ShuttingDownError).type.not.toBeConstructableWith('why')
  })

  test('an error that can end an entry carries its entry code and status', () => {
    expect(new errors.TooLargeError('a.bin', 'file', 1000).uploadCode).type.toBe<string>()
    expect(new errors.TooLargeError('a.bin', 'file', 1000).statusCode).type.toBe<413>()
  })
})
