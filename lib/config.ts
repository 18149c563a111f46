// The allowUpload schema, its defaults and accept parsing. Pure: no I/O, no Fastify.
// The narrow entry points: typebox/value would add some 8 MiB of resident memory.
import * as Type from 'typebox/type'
import { Check, Errors } from 'typebox/schema'
import type { FastifyRequest } from 'fastify'
import type { UploadConfig, UploadEntry, WriterFactory, ChunkedUploadOptions } from '../types/index.js'
import { BadOwnerError, InvalidConfigError, NoUploadNameError, UnexpectedFieldError } from './errors.js'
import { STORE_METHODS, type Store } from './stores/store.js'

const Fn = Type.Function([], Type.Any())
const PositiveInt = Type.Integer({ minimum: 1 })
// Node's timers hold at most 2^31 - 1 ms; a larger value would fire at once.
const Milliseconds = Type.Integer({ minimum: 1, maximum: 2_147_483_647 })
// `.ext`, `type/subtype` or `type/*`, all without parameters
const AcceptItem = Type.String({ pattern: '^(\\.[A-Za-z0-9][A-Za-z0-9._+-]*|[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/(\\*|[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*))$' })

const Opt = Type.Optional
const configProperties = {
  accept: Type.Union([Type.Literal('any'), Type.Array(AcceptItem, { minItems: 1 })]),
  maxEntries: Opt(PositiveInt),
  maxFileSize: Opt(Type.Integer({ minimum: 0 })),
  chunkSize: Opt(PositiveInt),
  chunkTimeout: Opt(Milliseconds),
  writerTimeout: Opt(Milliseconds),
  writer: Opt(Fn),
  validate: Opt(Fn),
  progress: Opt(Fn),
  onEntryError: Opt(Type.Union([Type.Literal('fail'), Type.Literal('continue')])),
  resumable: Opt(Type.Boolean())
}

export const UploadConfigSchema = Type.Object(configProperties, { additionalProperties: false })
export const PartialUploadConfigSchema = Type.Partial(UploadConfigSchema)

export const PluginOptionsSchema = Type.Object({
  tmpDir: Opt(Type.String({ minLength: 1 })),
  store: Opt(Type.Object({})),
  fsync: Opt(Type.Boolean()),
  defaults: Opt(PartialUploadConfigSchema),
  maxFields: Opt(Type.Integer({ minimum: 0 })),
  maxFieldSize: Opt(PositiveInt),
  channel: Opt(Type.Boolean()),
  channelSuffix: Opt(Type.String({ pattern: '^/[^?#]*[^/?#]$' })),
  channelWindow: Opt(Type.Integer({ minimum: 1, maximum: 1024 })),
  channelQueueBytes: Opt(PositiveInt),
  tmpFileQueueBytes: Opt(PositiveInt),
  owner: Opt(Fn),
  entryTtl: Opt(Milliseconds),
  resumableSuffix: Opt(Type.String({ pattern: '^/[^?#]*[^/?#]$' })),
  resumableExpiry: Opt(Milliseconds),
  resumableMaxLifetime: Opt(Milliseconds),
  maxResumableUploads: Opt(PositiveInt)
}, { additionalProperties: false })

/** LiveView's defaults, camelCased, plus ours. */
export const DEFAULTS = {
  maxEntries: 1,
  maxFileSize: 8_000_000,
  chunkSize: 64_000,
  chunkTimeout: 10_000,
  writerTimeout: 60_000,
  onEntryError: 'fail' as const
}

export const PLUGIN_DEFAULTS = {
  maxFields: 1000,
  maxFieldSize: 1_048_576,
  channelSuffix: '/ws',
  channelWindow: 32,
  channelQueueBytes: 16 * 1024 * 1024,
  tmpFileQueueBytes: 64 * 1024 * 1024,
  entryTtl: 300_000,
  resumableSuffix: '/tus',
  resumableExpiry: 3_600_000,
  resumableMaxLifetime: 86_400_000,
  maxResumableUploads: 1000
}

/** An upload config with every default filled in and `accept` parsed. */
export interface ResolvedConfig {
  /**
   * Stable across processes and restarts: the route (method, path, constraints) and the
   * upload name. Configs are compared by key, never by identity, so anything that names
   * one (a parked ref, a resumable upload) can be stored outside the process.
   */
  key: string
  uploadName: string
  accept: Accept
  maxEntries: number
  maxFileSize: number
  chunkSize: number
  chunkTimeout: number
  writerTimeout: number
  writer: WriterFactory
  validate: UploadConfig['validate']
  progress: UploadConfig['progress']
  onEntryError: 'fail' | 'continue'
  /** Served by the route's resumable (tus / IETF) endpoint too. */
  resumable: boolean
}

export interface Accept { any: boolean, extensions: string[], types: Set<string>, wildcards: string[] }

export function parseAccept (accept: UploadConfig['accept']): Accept {
  if (accept === 'any') return { any: true, extensions: [], types: new Set(), wildcards: [] }
  const parsed: Accept = { any: false, extensions: [], types: new Set(), wildcards: [] }
  for (const raw of accept) {
    const item = raw.toLowerCase()
    if (item.startsWith('.')) parsed.extensions.push(item)
    else if (item.endsWith('/*')) parsed.wildcards.push(item.slice(0, -1))
    else parsed.types.add(item)
  }
  return parsed
}

/** An entry matches if its declared type or its filename extension matches. */
export function isAccepted (accept: Accept, clientName: string, clientType: string): boolean {
  if (accept.any) return true
  if (clientType !== '' && (accept.types.has(clientType) || accept.wildcards.some((prefix) => clientType.startsWith(prefix)))) return true
  const name = clientName.toLowerCase()
  return accept.extensions.some((ext) => name.endsWith(ext) && name.length > ext.length)
}

/** The first schema error, phrased with the offending key. */
function describe (schema: typeof UploadConfigSchema | typeof PartialUploadConfigSchema | typeof PluginOptionsSchema, value: unknown): string | undefined {
  if (Check(schema, value)) return undefined
  const [, errors] = Errors(schema, value)
  const extra = errors.find((e) => e.keyword === 'additionalProperties')
  if (extra !== undefined) {
    const keys = (extra.params as { additionalProperties: string[] }).additionalProperties
    return `unknown option "${keys.join('", "')}"`
  }
  const required = errors.find((e) => e.keyword === 'required')
  if (required !== undefined) {
    return `missing option "${(required.params as { requiredProperties: string[] }).requiredProperties.join('", "')}"`
  }
  // Prefer the most specific message: the deepest path, skipping anyOf summaries.
  const rank = (e: { keyword: string, instancePath: string }): number => e.instancePath.length * 2 + Number(e.keyword !== 'anyOf')
  const specific = errors.sort((a, b) => rank(b) - rank(a))[0]!
  const path = specific.instancePath.split('/').slice(1)
  const key = path.join('.')
  const got = JSON.stringify(path.reduce<any>((at, part) => at[part], value))
  // Unions read badly as schema messages ("must be equal to constant"): say what is allowed.
  const hint = HINTS[path.at(-1)!] ?? HINTS[path.at(-2)!]
  return hint === undefined ? `"${key}" ${specific.message}` : `"${key}" must be ${hint} (got ${got})`
}

const HINTS: Record<string, string> = {
  accept: '\'any\' or a non-empty list of ".ext", "type/subtype", "type/*"',
  channelSuffix: 'a path that starts with "/" and does not end with one',
  resumableSuffix: 'a path that starts with "/" and does not end with one',
  onEntryError: '\'fail\' or \'continue\''
}

export interface PluginSettings {
  tmpDir: string | undefined
  store: Store | undefined
  fsync: boolean
  defaults: Partial<UploadConfig>
  maxFields: number
  maxFieldSize: number
  channel: boolean
  channelSuffix: string
  channelWindow: number
  channelQueueBytes: number
  tmpFileQueueBytes: number
  owner: OwnerFn
  entryTtl: number
  resumableSuffix: string
  resumableExpiry: number
  resumableMaxLifetime: number
  maxResumableUploads: number
}

/** Who owns what a request uploads: a string (a user id, a session), or undefined for nobody. */
export type OwnerFn = (request: FastifyRequest) => Promise<string | undefined>

/**
 * The app's `owner` option, checked: owners are strings (stored, compared and logged as
 * they are), so anything else is a server bug, a 500 that says what came back.
 */
function checkedOwner (owner: ChunkedUploadOptions['owner']): OwnerFn {
  // Without an owner, refs are bearer tokens: everyone is the same owner.
  if (owner === undefined) return async () => undefined
  return async (request) => {
    const found: unknown = await owner(request)
    if (found === undefined || found === null) return undefined
    if (typeof found !== 'string') throw new BadOwnerError(typeof found)
    return found
  }
}

export function validatePluginOptions (options: unknown): PluginSettings {
  const problem = describe(PluginOptionsSchema, options)
  if (problem !== undefined) throw new InvalidConfigError(`fastify-chunked-upload options: ${problem}`)
  const opts = options as ChunkedUploadOptions
  const missing = STORE_METHODS.filter((method) => opts.store !== undefined && typeof opts.store[method] !== 'function')
  if (missing.length > 0) throw new InvalidConfigError(`fastify-chunked-upload options: "store" must be a store (MemoryStore, FileStore or one like them): it has no ${missing.join(', ')}`)
  return {
    tmpDir: opts.tmpDir,
    store: opts.store,
    fsync: opts.fsync ?? false,
    defaults: opts.defaults ?? {},
    maxFields: opts.maxFields ?? PLUGIN_DEFAULTS.maxFields,
    maxFieldSize: opts.maxFieldSize ?? PLUGIN_DEFAULTS.maxFieldSize,
    channel: opts.channel ?? false,
    channelSuffix: opts.channelSuffix ?? PLUGIN_DEFAULTS.channelSuffix,
    channelWindow: opts.channelWindow ?? PLUGIN_DEFAULTS.channelWindow,
    channelQueueBytes: opts.channelQueueBytes ?? PLUGIN_DEFAULTS.channelQueueBytes,
    tmpFileQueueBytes: opts.tmpFileQueueBytes ?? PLUGIN_DEFAULTS.tmpFileQueueBytes,
    owner: checkedOwner(opts.owner),
    entryTtl: opts.entryTtl ?? PLUGIN_DEFAULTS.entryTtl,
    resumableSuffix: opts.resumableSuffix ?? PLUGIN_DEFAULTS.resumableSuffix,
    resumableExpiry: opts.resumableExpiry ?? PLUGIN_DEFAULTS.resumableExpiry,
    resumableMaxLifetime: opts.resumableMaxLifetime ?? PLUGIN_DEFAULTS.resumableMaxLifetime,
    maxResumableUploads: opts.maxResumableUploads ?? PLUGIN_DEFAULTS.maxResumableUploads
  }
}

/**
 * Validates one route's allowUpload against the schema and resolves every default.
 * `where` names the route (`POST /profile`) in the error message; `routeKey` (the route
 * with its constraints) prefixes each config's key.
 */
export function resolveAllowUpload (
  allowUpload: unknown,
  defaults: Partial<UploadConfig>,
  defaultWriter: WriterFactory,
  where: string,
  routeKey = where
): Map<string, ResolvedConfig> {
  if (allowUpload === null || typeof allowUpload !== 'object' || Array.isArray(allowUpload)) {
    throw new InvalidConfigError(`allowUpload of ${where} must be an object of upload names`)
  }
  const names = Object.keys(allowUpload)
  if (names.length === 0) throw new InvalidConfigError(`allowUpload of ${where} declares no upload name`)
  const resolved = new Map<string, ResolvedConfig>()
  for (const uploadName of names) {
    if (uploadName in Object.prototype || uploadName === '__proto__') {
      throw new InvalidConfigError(`allowUpload of ${where}: "${uploadName}" cannot be an upload name`)
    }
    const own = (allowUpload as Record<string, unknown>)[uploadName]
    if (own === null || typeof own !== 'object') {
      throw new InvalidConfigError(`allowUpload.${uploadName} of ${where} must be an object`)
    }
    const merged = { ...defaults, ...own } as UploadConfig
    const problem = describe(UploadConfigSchema, merged)
    if (problem !== undefined) throw new InvalidConfigError(`allowUpload.${uploadName} of ${where}: ${problem}`)
    resolved.set(uploadName, {
      key: `${routeKey} ${JSON.stringify(uploadName)}`,
      uploadName,
      accept: parseAccept(merged.accept),
      maxEntries: merged.maxEntries ?? DEFAULTS.maxEntries,
      maxFileSize: merged.maxFileSize ?? DEFAULTS.maxFileSize,
      chunkSize: merged.chunkSize ?? DEFAULTS.chunkSize,
      chunkTimeout: merged.chunkTimeout ?? DEFAULTS.chunkTimeout,
      writerTimeout: merged.writerTimeout ?? DEFAULTS.writerTimeout,
      writer: merged.writer ?? defaultWriter,
      validate: merged.validate,
      progress: merged.progress,
      onEntryError: merged.onEntryError ?? DEFAULTS.onEntryError,
      resumable: merged.resumable ?? false
    })
  }
  return resolved
}

/**
 * The upload name a request without file parts targets (a raw body, a resumable
 * creation): the only one, or the one named by the `upload` query parameter.
 */
export function chooseConfig (configs: ReadonlyMap<string, ResolvedConfig>, query: unknown): ResolvedConfig {
  const names = [...configs.keys()]
  const asked = (query as Record<string, unknown> | undefined)?.upload
  if (typeof asked === 'string') {
    const config = configs.get(asked)
    if (config === undefined) throw new UnexpectedFieldError(asked, names.join(', '))
    return config
  }
  if (names.length > 1) throw new NoUploadNameError(names.join(', '))
  return configs.get(names[0]!)!
}

/** Keeps only a safe basename: no directories, no control characters, at most 255 characters. */
export function safeBasename (name: string | undefined): string {
  if (name === undefined) return ''
  // eslint-disable-next-line no-control-regex
  const base = name.replace(/[\u0000-\u001f\u007f]/g, '').split(/[/\\]/).pop()!.trim()
  if (base === '.' || base === '..') return ''
  return base.slice(0, 255)
}

/** `type/subtype` of a Content-Type header, lowercased, without parameters. */
export function mediaType (header: string | undefined): string {
  if (header === undefined) return ''
  return header.split(';', 1)[0]!.trim().toLowerCase()
}

export type { UploadEntry }
