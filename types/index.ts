// The public contract of fastify-chunked-upload: what writer authors, route authors
// and handlers rely on. Types only: nothing here runs.
import type { FastifyRequest } from 'fastify'
import type { Store } from '../lib/stores/store.js'

/** Why a writer is closed. `{ error }` exactly when `writeChunk` or `checkpoint` threw (or timed out) while the entry was not being cancelled. */
export type CloseReason = 'done' | 'cancel' | { error: unknown }

/** What `discard` is told about the entry it lets go of. */
export interface DiscardInfo {
  /** A consumer took the entry; `false`: it was dropped unconsumed. */
  readonly consumed: boolean
}

/**
 * What `init` and `writeChunk` get besides their data: `signal` is aborted when the
 * entry is cancelled (client gone, timeout, shutdown, …), so a call waiting on a remote
 * service can stop at once rather than hold the cancellation up to `writerTimeout`. A
 * call that ends because of it may throw: the writer then gets `close(state, 'cancel')`. The
 * plugin always passes it; it is optional for code that calls a writer directly.
 */
export interface WriterCall {
  readonly signal: AbortSignal
}

/** A value JSON can carry unchanged: what a writer snapshot is made of. */
export type JsonValue = string | number | boolean | null | readonly JsonValue[] | { readonly [key: string]: JsonValue }

/**
 * What `checkpoint` returns and `restore` takes: a JSON object (a store keeps it as
 * text, anywhere) whose `offset` is the number of bytes of the entry it makes durable,
 * the bytes `writeChunk` got before it. A store reads the upload's durable offset from
 * this field and from nothing else; the rest is the writer's own (a path, an upload id, a
 * list of parts). Declare a writer's own snapshot as a `type` (an `interface` has no
 * index signature, so it is not assignable to this).
 */
/** What `checkpoint` is told besides the state. */
export interface CheckpointInfo {
  /**
   * No call on this state follows in this process (the server is shutting down and keeps
   * the upload for the process that continues it, where its one `close` comes): release
   * what the state holds open (a file descriptor, a connection) after making it durable.
   */
  last: boolean
}

export type WriterSnapshot = { readonly offset: number } & { readonly [key: string]: JsonValue }

/**
 * An upload writer: where the bytes of one entry go. The plugin calls `init` once,
 * `writeChunk` once per chunk in order, and `close` exactly once if `init` succeeded.
 * Calls on one writer never overlap.
 */
export interface UploadWriter<Options = any, State = any, Meta = any> {
  init (options: Options, call?: WriterCall): State | Promise<State>
  meta (state: State): Meta
  /**
   * `data` is the writer's: the plugin never reuses or changes it after the call, so a
   * writer may keep it without copying. It may be a view into a larger buffer (the
   * socket read it came from), which it keeps alive while held.
   */
  writeChunk (data: Buffer, state: State, call?: WriterCall): State | Promise<State>
  close (state: State, reason: CloseReason): State | Promise<State>
  /**
   * Optional. Called once, after `close(state, 'done')`, when the plugin lets go of a
   * finished entry: after it was consumed (`consumed: true`: a consumer, or the final
   * upload of a concatenation, took it), or when it is dropped unconsumed (`false`: the
   * request ended, its ref expired or was cancelled, its `'done'` failed). A writer that
   * leaves something behind removes it here: a temp file always, an object in storage
   * only when it was dropped.
   */
  discard? (state: State, info: DiscardInfo): void | Promise<void>
  /**
   * Optional. Reads back the bytes of a finished entry (after `close(state, 'done')`,
   * before `discard`): every byte `writeChunk` got, in order, as one or more buffers. A
   * `Readable` is one. The plugin reads partial uploads of a concatenation back through
   * it (they are staged with a writer that has it: the temp-file writer), so the final
   * upload's bytes reach the route's writer like an append's.
   */
  read? (state: State, call?: WriterCall): AsyncIterable<Buffer>
  /**
   * Optional, with `restore`: lets another process (or this one, after a restart) go on
   * with an unfinished entry. Makes every byte passed to a settled `writeChunk` durable
   * and describes the state as a snapshot whose `offset` counts those bytes. When it
   * resolves, those bytes survive at least the process dying (kill -9); what else they
   * survive (a power loss) is the writer's to document. Called on an open writer (after
   * `init` or `restore`, before `close`), never overlapping another call, and never per
   * chunk: at a resumable upload's creation and at the end of every append (PATCH),
   * and at shutdown (`info.last`). It may take a while (a flush, an upload of a buffered
   * part). It throws if those bytes cannot be made durable (a write failed): then no
   * snapshot exists past the previous one, and the entry fails (`close` with the error).
   */
  checkpoint? (state: State, info?: CheckpointInfo): WriterSnapshot | Promise<WriterSnapshot>
  /**
   * Optional, with `checkpoint`: rebuilds, in any process, a state from a snapshot, ready
   * for the next `writeChunk` as if `snapshot.offset` bytes had been written: what was
   * written past the snapshot is discarded (the client sends it again). `options` are
   * this process's writer options, as `init` gets them. The snapshot comes from a store:
   * a writer checks it (its fields, and that it names only what this writer owns) and
   * throws rather than touch anything else, or when the bytes it promises are gone. The
   * state it returns gets `close` exactly once, as one from `init` does.
   */
  restore? (snapshot: WriterSnapshot, options: Options, call?: WriterCall): State | Promise<State>
}

/** What a writer factory returns: a writer (initialised with `undefined`) or `[writer, options]`. */
export type WriterSpec = UploadWriter<any, any, any> | readonly [UploadWriter<any, any, any>, unknown]

/** Called once per valid entry to choose its writer. */
export type WriterFactory = (
  uploadName: string,
  entry: UploadEntry,
  request: FastifyRequest
) => WriterSpec | Promise<WriterSpec>

export type EntryStatus = 'pending' | 'uploading' | 'done' | 'cancelled' | 'failed'

/** Error codes an entry (or an upload name) can carry. `validate` may add its own. */
export type UploadErrorCode =
  | 'too_large'
  | 'too_many_files'
  | 'not_accepted'
  | 'writer_failure'
  | 'chunk_timeout'
  | 'cancelled'
  | 'invalid'
  | (string & {})

/** One uploaded file, read-only to users. */
export interface UploadEntry {
  /** Unguessable identifier of this entry. */
  readonly ref: string
  /** The upload name (the key in `allowUpload`). */
  readonly uploadName: string
  /** The file name the client gave, reduced to a safe basename. */
  readonly clientName: string
  /** The media type the client declared (lowercased, without parameters); '' if none. */
  readonly clientType: string
  /** The size the client declared, when it declared one. */
  readonly clientSize: number | undefined
  readonly clientLastModified?: number | undefined
  /** Bytes accepted by the writer so far. */
  readonly bytesReceived: number
  /** 0–100, from accepted bytes; 100 only when the entry is done. */
  readonly progress: number
  readonly status: EntryStatus
  readonly errors: readonly UploadErrorCode[]
}

/** One `allowUpload` entry. Every key but `accept` has a default. */
export interface UploadConfig {
  /** `.ext`, `type/subtype`, `type/*`, or `'any'`. */
  accept: 'any' | readonly string[]
  /**
   * Most entries one request may carry for this name. Default 1. On the resumable endpoint:
   * most uploads open at once per owner (the plugin's `owner`; requests without one are
   * not limited by it, `maxResumableUploads` bounds them).
   */
  maxEntries?: number
  /** Largest file in bytes. Default 8_000_000. */
  maxFileSize?: number
  /** Largest chunk handed to `writeChunk`, in bytes. Default 64_000. */
  chunkSize?: number
  /** Client silence (no bytes arriving) that cancels the upload, in ms. Default 10_000. */
  chunkTimeout?: number
  /** Longest a single writer call may take before it counts as a writer failure, in ms. Default 60_000. */
  writerTimeout?: number
  /** Chooses the writer of each entry. Default: the temp-file writer. */
  writer?: WriterFactory
  /** Extra check on each announced entry: return an error code to refuse it. */
  validate?: (entry: UploadEntry) => UploadErrorCode | undefined | void | Promise<UploadErrorCode | undefined | void>
  /**
   * Called when an entry's progress changes, and when it ends, with the request that
   * carries its bytes: the upload's own request, or for a resumable upload the append
   * (PATCH, or the creation) under way. `undefined` when a resumable upload changes
   * outside any append: it expires, is terminated (DELETE), or a shutdown cancels it
   * while no append runs.
   */
  progress?: (uploadName: string, entry: UploadEntry, request: FastifyRequest | undefined) => void | Promise<void>
  /** `'fail'` (default): a failing entry fails the request. `'continue'`: the handler runs and reads `request.uploads.errors()`. */
  onEntryError?: 'fail' | 'continue'
  /** Also accept this upload name over the route's resumable endpoint (tus 1.0 and the IETF draft). Default false. */
  resumable?: boolean
}

/** The route option: upload names to their configs. */
export type AllowUpload = Record<string, UploadConfig>

/** Plugin options. */
export interface ChunkedUploadOptions {
  /**
   * Where the plugin keeps its files. With the default store they go in its
   * subdirectory `fastify-chunked-upload`, which one running process claims: give each
   * process its own tmpDir. Default: the OS temp directory.
   */
  tmpDir?: string
  /**
   * Where upload state lives between requests and processes: durable resumable uploads'
   * records and locks. Default: a `FileStore` in `<tmpDir>/fastify-chunked-upload`, opened
   * (and closed) by the plugin, so resumable uploads survive a restart. `new MemoryStore()`
   * keeps them in this process only. A store given here is the app's to close.
   */
  store?: Store
  /**
   * Checkpoints of the plugin's temp files, and the default store's records, also wait for
   * the disk: a saved offset survives a power loss, not only the process dying. Default false.
   */
  fsync?: boolean
  /** Defaults for every `allowUpload` config of the routes in this scope. */
  defaults?: Partial<UploadConfig>
  /** Most text fields in one multipart request. Default 1000. */
  maxFields?: number
  /** Largest text field in bytes. Default 1_048_576. */
  maxFieldSize?: number
  /**
   * Serve a WebSocket upload channel for every route with `allowUpload` (needs
   * `@fastify/websocket`, registered after this plugin and before the routes). See PROTOCOL.md. Default false.
   */
  channel?: boolean
  /** The channel's path is the route's path plus this. Default `'/ws'`. */
  channelSuffix?: string
  /** Chunk frames a channel client may send before their acknowledgement. Default 32. */
  channelWindow?: number
  /**
   * Chunk bytes received over this instance's channel sockets and waiting for their
   * writers: past it, channel sockets stop being read until half of it is free.
   * Default 16_777_216 (16 MiB).
   */
  channelQueueBytes?: number
  /**
   * Bytes handed to this instance's temp-file writers and not yet on disk: past it,
   * their `writeChunk` waits for the disk. Default 67_108_864 (64 MiB).
   */
  tmpFileQueueBytes?: number
  /**
   * Who owns an upload, as a string (a user id, say): a finished channel entry's ref can
   * only be consumed by a request with the same owner, a resumable upload only reached by
   * it, and `maxEntries` counts resumable uploads per owner. `undefined` (or `null`) is
   * nobody; any other value fails the request with a 500 `FST_CHUNKED_UPLOAD_BAD_OWNER`.
   * Default: nobody, refs are bearer tokens.
   */
  owner?: (request: FastifyRequest) => string | undefined | null | Promise<string | undefined | null>
  /** How long a finished channel or resumable entry waits for its ref to be consumed, in ms. Default 300_000. */
  entryTtl?: number
  /** The resumable endpoint's path is the route's path plus this. Default `'/tus'`. */
  resumableSuffix?: string
  /** A resumable upload without any request or byte for this long expires (its writer gets 'cancel'), in ms. Default 3_600_000. */
  resumableExpiry?: number
  /** The longest a resumable upload may take from creation to its last byte, in ms. Default 86_400_000. */
  resumableMaxLifetime?: number
  /**
   * Resumable uploads open at once in this plugin instance, every owner and route together
   * (unfinished, finished waiting for their ref, staged partials); a creation past it gets
   * 503 `FST_CHUNKED_UPLOAD_TOO_MANY_UPLOADS`. Bounds disk and file descriptors. Default 1000.
   */
  maxResumableUploads?: number
}

/** An error recorded against an upload name or an entry. */
export interface UploadError {
  readonly uploadName: string
  /** The entry's ref, absent for errors of the whole upload name (`too_many_files`). */
  readonly ref?: string | undefined
  readonly clientName?: string | undefined
  readonly code: UploadErrorCode
}

/** What a consume callback may return to keep the entry for later. */
export interface Postpone<T> { postpone: T }

export type ConsumeFn<Meta, T> = (meta: Meta, entry: UploadEntry) => T | Postpone<T> | Promise<T | Postpone<T>>

/**
 * Events of `request.uploads`, each with the entry: `progress` (bytes accepted),
 * `done` (its writer's `close('done')` settled), `error` (refused or failed), `cancel`.
 */
export type UploadEvent = 'progress' | 'done' | 'error' | 'cancel'

/** `request.uploads`: the entries of one request (or socket). */
export interface RequestUploads {
  on (event: UploadEvent, listener: (entry: UploadEntry) => void): this
  once (event: UploadEvent, listener: (entry: UploadEntry) => void): this
  off (event: UploadEvent, listener: (entry: UploadEntry) => void): this
  /** The entries of one upload name, split by whether they are done. */
  entries (uploadName: string): { completed: UploadEntry[], inProgress: UploadEntry[] }
  /** Runs `fn` on every completed entry of `uploadName`, in arrival order, and returns the values. */
  consume<Meta = any, T = unknown> (uploadName: string, fn: ConsumeFn<Meta, T>): Promise<T[]>
  /** Runs `fn` on one completed entry. */
  consumeEntry<Meta = any, T = unknown> (ref: string, fn: ConsumeFn<Meta, T>): Promise<T>
  /** Errors of one upload name, or of all. */
  errors (uploadName?: string): UploadError[]
  /** Cancels an entry still uploading, or discards a finished one. */
  cancel (ref: string): Promise<void>
}

declare module 'fastify' {
  interface RouteShorthandOptions {
    /** Upload names this route accepts, with their limits and writers. */
    allowUpload?: AllowUpload
  }
  interface FastifyRequest {
    /** The uploads of this request; `null` on routes without `allowUpload`. */
    uploads: RequestUploads
  }
}
