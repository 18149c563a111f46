// The routes an upload route derives (its WebSocket channel, its resumable endpoint):
// what they take from the route, and one set of them per path.
import { isDeepStrictEqual } from 'node:util'
import type { FastifyInstance, RouteOptions } from 'fastify'
import type { ResolvedConfig } from './config.js'
import { RouteConflictError } from './errors.js'

/** The route's hooks that run on its derived routes too, in the route's order. */
const CARRIED_HOOKS = [
  'onRequest', 'preParsing', 'preValidation', 'preHandler', 'preSerialization', 'onSend', 'onResponse', 'onError', 'onTimeout', 'onRequestAbort'
] as const
/** The route's options that protect or shape it, carried as they are. */
const CARRIED_OPTIONS = ['constraints', 'errorHandler', 'bodyLimit', 'handlerTimeout', 'config', 'logLevel', 'logSerializers', 'childLoggerFactory'] as const

type HookName = typeof CARRIED_HOOKS[number]
type OptionName = typeof CARRIED_OPTIONS[number]
type AnyHook = (...args: any[]) => any

/** What the derived routes of a route take from it: its own hooks and options. */
export interface Carried {
  hooks: Record<HookName, AnyHook[]>
  options: Partial<Pick<RouteOptions, OptionName>>
}

const hookList = (value: unknown): AnyHook[] => value === undefined ? [] : [value].flat() as AnyHook[]

/** The route's own hooks and options, as declared (before the plugin adds its hooks). */
export function carriedFrom (route: RouteOptions): Carried {
  const hooks = {} as Carried['hooks']
  for (const name of CARRIED_HOOKS) hooks[name] = hookList(route[name])
  const options: Record<string, unknown> = {}
  for (const name of CARRIED_OPTIONS) if (route[name] !== undefined) options[name] = route[name]
  return { hooks, options }
}

/**
 * A derived route's options: the route's, with the plugin's own hooks around the
 * route's (`first` before them, `last` after them).
 */
export function derivedOptions (
  carried: Carried, ours: { first?: Partial<Record<HookName, AnyHook>>, last?: Partial<Record<HookName, AnyHook>> }
): Partial<RouteOptions> {
  const options: Record<string, unknown> = { ...carried.options, exposeHeadRoute: false }
  for (const name of CARRIED_HOOKS) {
    const first = ours.first?.[name]
    const last = ours.last?.[name]
    options[name] = [...(first === undefined ? [] : [first]), ...carried.hooks[name], ...(last === undefined ? [] : [last])]
  }
  return options as Partial<RouteOptions>
}

/** A route that derives routes: where it was declared, what it carries, what it serves. */
export interface Origin {
  /** `POST /files`, for messages. */
  where: string
  instance: FastifyInstance
  constraints: RouteOptions['constraints']
  carried: Carried
  /** The upload configs the derived route serves. */
  configs: Map<string, ResolvedConfig>
  /** All of the route's upload configs: where a shared name takes the first route's config. */
  routeConfigs: Map<string, ResolvedConfig>
}

/** How two routes that would derive the same route differ, in words; undefined if they don't. */
function difference (first: Origin, later: Origin): string | undefined {
  if (first.instance !== later.instance) return 'plugin scope (they are registered in different plugins)'
  for (const name of CARRIED_HOOKS) {
    const a = first.carried.hooks[name]
    const b = later.carried.hooks[name]
    if (a.length !== b.length || a.some((hook, i) => hook !== b[i])) return `${name} hooks`
  }
  for (const name of CARRIED_OPTIONS) {
    if (!isDeepStrictEqual(first.carried.options[name], later.carried.options[name])) return name
  }
  const names = (configs: Map<string, ResolvedConfig>): string => [...configs.keys()].sort().join(', ')
  if (names(first.configs) !== names(later.configs)) return `upload names (${names(first.configs)} / ${names(later.configs)})`
  for (const [name, config] of first.configs) {
    if (!isDeepStrictEqual(config, later.configs.get(name))) return `the declaration of upload "${name}"`
  }
  return undefined
}

/** Constraints as a key: equal constraints, equal keys (a RegExp by its source). */
function constraintsKey (constraints: RouteOptions['constraints'] = {}): string {
  const entries = Object.keys(constraints).sort().map((name) => [name, constraints[name]])
  return JSON.stringify(entries, (_key, value: unknown) => value instanceof RegExp ? String(value) : value)
}

/**
 * One derived route per URL and constraints, however many routes declare it (`POST
 * /files` and `PUT /files` share `/files/tus`). Routes that share one must declare it
 * alike: the same hooks, options and upload configs; else startup fails naming both.
 */
export class DerivedRoutes {
  readonly #origins = new Map<string, Origin>()

  /**
   * True if `origin` is the first to derive `url` (the caller registers it). A later
   * route declaring it alike shares it, and takes the first route's config objects for
   * the names it serves, so that an entry from the shared route is claimable on both.
   */
  claim (url: string, what: string, origin: Origin): boolean {
    const key = `${url} ${constraintsKey(origin.constraints)}`
    const first = this.#origins.get(key)
    if (first === undefined) {
      this.#origins.set(key, origin)
      return true
    }
    const differs = difference(first, origin)
    if (differs !== undefined) throw new RouteConflictError(first.where, origin.where, what, url, differs)
    for (const [name, config] of first.configs) origin.routeConfigs.set(name, config)
    return false
  }
}
