// The routes an upload route derives (its WebSocket channel, its resumable endpoint):
// what they take from the route, how they are marked as derived, and one set of them per path.
import { isDeepStrictEqual } from 'node:util'
import type { FastifyInstance, RouteOptions } from 'fastify'
import type { ResolvedConfig } from './config.js'
import { InvalidConfigError, PluginOrderError, RouteConflictError } from './errors.js'
import type { UploadRoute } from './transports/transport.js'

/** The route's hooks that run on its derived routes too, in the route's order. */
export const CARRIED_HOOKS = [
  'onRequest', 'preParsing', 'preValidation', 'preHandler', 'preSerialization', 'onSend', 'onResponse', 'onError', 'onTimeout', 'onRequestAbort'
] as const
/**
 * The route's options that cannot apply to a derived route: what makes it that route (its
 * method, path, handler and uploads) and what the derived route sets itself. Every other
 * option is carried, an app's or another plugin's own (`auth: true`, say) included, so that
 * whatever protects or shapes the route applies to what it derives.
 */
const NOT_CARRIED: ReadonlySet<string> = new Set([
  ...CARRIED_HOOKS, 'method', 'url', 'path', 'routePath', 'prefix', 'handler', 'wsHandler', 'websocket', 'allowUpload',
  'exposeHeadRoute', 'prefixTrailingSlash', 'schema'
])
/**
 * The route's schema keys that validate or serialize its own requests and replies: derived
 * routes speak their own protocols. The rest (security, tags, description, hide, …) is carried.
 */
const NOT_CARRIED_SCHEMA: ReadonlySet<string> = new Set(['body', 'querystring', 'params', 'headers', 'response'])

export type HookName = typeof CARRIED_HOOKS[number]
type AnyHook = (...args: any[]) => any

/** What the derived routes of a route take from it: its own hooks and options. */
export interface Carried {
  hooks: Record<HookName, AnyHook[]>
  options: Record<string, unknown>
}

export const hookList = (value: unknown): AnyHook[] => value === undefined ? [] : [value].flat() as AnyHook[]

/** The route's hooks and options as this plugin's onRoute hook sees them (before it adds its own). */
export function carriedFrom (route: RouteOptions): Carried {
  const hooks = {} as Carried['hooks']
  for (const name of CARRIED_HOOKS) hooks[name] = hookList(route[name])
  const options: Record<string, unknown> = {}
  for (const [name, value] of Object.entries(route)) if (!NOT_CARRIED.has(name) && value !== undefined) options[name] = value
  const schema = Object.entries(route.schema ?? {}).filter(([name]) => !NOT_CARRIED_SCHEMA.has(name))
  if (schema.length > 0) options.schema = Object.fromEntries(schema)
  return { hooks, options }
}

/**
 * A derived route's options: the route's, with the plugin's own hooks around the route's
 * (`first` before them, `last` after them). Each spread of them (`{ ...options, method, … }`)
 * gets its own hook arrays, schema and config: another plugin's onRoute hook may edit
 * those in place, and must not edit them for every route registered with these options.
 */
export function derivedOptions (
  carried: Carried, ours: { first?: Partial<Record<HookName, AnyHook>>, last?: Partial<Record<HookName, AnyHook>> }
): Partial<RouteOptions> {
  const options: Record<string, unknown> = { ...carried.options, exposeHeadRoute: false }
  const fresh = (name: string, make: () => unknown): void => { Object.defineProperty(options, name, { enumerable: true, get: make }) }
  for (const name of ['schema', 'config']) {
    const value = carried.options[name]
    if (typeof value === 'object' && value !== null) fresh(name, () => ({ ...value }))
  }
  for (const name of CARRIED_HOOKS) {
    const first = ours.first?.[name]
    const last = ours.last?.[name]
    fresh(name, () => [...(first === undefined ? [] : [first]), ...carried.hooks[name], ...(last === undefined ? [] : [last])])
  }
  return options as Partial<RouteOptions>
}

/** On a derived route's options: the route it derives from, and what this plugin gave it. */
const kDerivedFrom = Symbol('fastify-chunked-upload.derivedFrom')
interface DerivedFrom {
  /** The route it derives from, for messages: `POST /files`. */
  where: string
  /** How many hooks of each kind it was given. */
  hookCounts: Record<HookName, number>
  /** Its preParsing hook that takes the body, which must stay last; undefined if it takes none. */
  bodyHook: unknown
}
type Derived = RouteOptions & { [kDerivedFrom]?: DerivedFrom }

/**
 * A derived route's options (see derivedOptions: spread them once per route), marked with
 * the route it derives from and, if it takes the body itself, the hook that does.
 */
export function derivedRoute (where: string, bodyHook: unknown, ...args: Parameters<typeof derivedOptions>): Partial<RouteOptions> {
  const options = derivedOptions(...args)
  const hookCounts = {} as DerivedFrom['hookCounts']
  for (const name of CARRIED_HOOKS) hookCounts[name] = hookList(options[name]).length
  // Added, not spread: a spread would fix the fresh arrays once.
  return Object.assign(options, { [kDerivedFrom]: { where, hookCounts, bodyHook } })
}

/**
 * A derived route, as this plugin's onRoute hook sees it: its hook that takes the body, if
 * any (undefined for other routes). Throws if an onRoute hook that ran before this one added
 * hooks to it: it did the same to the route it derives from, whose hooks it carries, so
 * they would run twice.
 */
export function checkDerived (route: RouteOptions): unknown {
  const derivedFrom = (route as Derived)[kDerivedFrom]
  if (derivedFrom === undefined) return undefined
  const grown = CARRIED_HOOKS.find((name) => hookList(route[name]).length > derivedFrom.hookCounts[name])
  if (grown !== undefined) throw new PluginOrderError(grown, derivedFrom.where, route.url)
  return derivedFrom.bodyHook
}

/** A route, for messages: `POST /files`; a derived route (on every method) by its URL and origin. */
export function nameOf (route: RouteOptions): string {
  const derivedFrom = (route as Derived)[kDerivedFrom]
  return derivedFrom === undefined ? `${[route.method].flat().join(',')} ${route.url}` : `${route.url} (derived from ${derivedFrom.where})`
}

/** A route's own path plus a suffix (`/up/` + `/ws` → `/up/ws`), under the same prefix. */
function pathWithSuffix (routePath: string, suffix: string): string {
  return (routePath.endsWith('/') ? routePath.slice(0, -1) : routePath) + suffix
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
  // The scope's own hooks, error handler and decorators apply to a route registered in it,
  // and no public API shows them: routes of other scopes cannot be told alike.
  if (first.instance !== later.instance) return 'plugin scope (they are registered in different plugins: register them in one)'
  for (const name of CARRIED_HOOKS) {
    const a = first.carried.hooks[name]
    const b = later.carried.hooks[name]
    if (a.length === b.length && a.every((hook, i) => hook === b[i])) continue
    // Alike but for identity: copies made per route, by a factory or another plugin's onRoute hook.
    const copies = a.length === b.length && a.every((hook, i) => hook === b[i] || (hook.name !== '' && hook.name === b[i].name))
    return `${name} hooks (the same functions, in the same order${copies
      ? '; these are per-route copies of the same functions: make them once, and register plugins that add them from their onRoute hook after fastify-chunked-upload'
      : ''})`
  }
  const options = new Set([...Object.keys(first.carried.options), ...Object.keys(later.carried.options)])
  for (const name of [...options].sort()) {
    if (!isDeepStrictEqual(first.carried.options[name], later.carried.options[name])) return name
  }
  const names = (configs: Map<string, ResolvedConfig>): string => [...configs.keys()].sort().join(', ')
  if (names(first.configs) !== names(later.configs)) return `upload names (${names(first.configs)} / ${names(later.configs)})`
  for (const [name, { key: _first, ...config }] of first.configs) {
    // Keys name each route: alike declarations on two routes differ in them only.
    const { key: _later, ...other } = later.configs.get(name)!
    if (!isDeepStrictEqual(config, other)) return `the declaration of upload "${name}"`
  }
  return undefined
}

/** Constraints as a key: equal constraints, equal keys (a RegExp by its source). */
export function constraintsKey (constraints: RouteOptions['constraints'] = {}): string {
  const entries = Object.keys(constraints).sort().map((name) => [name, constraints[name]])
  return JSON.stringify(entries, (_key, value: unknown) => value instanceof RegExp ? String(value) : value)
}

/** The router options that decide which paths are one route (Fastify's `routerOptions`). */
export interface RouterMatching {
  caseSensitive: boolean
  ignoreDuplicateSlashes: boolean
}

/** The router options that make two paths one route, however the app gave them. */
export function routerMatching (fastify: FastifyInstance): RouterMatching {
  const config = fastify.initialConfig as { routerOptions?: Partial<RouterMatching> } & Partial<RouterMatching>
  // Fastify 5 keeps the older top-level options (deprecated) where routerOptions is not given.
  const given = config.routerOptions ?? { caseSensitive: config.caseSensitive, ignoreDuplicateSlashes: config.ignoreDuplicateSlashes }
  return { caseSensitive: given.caseSensitive !== false, ignoreDuplicateSlashes: given.ignoreDuplicateSlashes === true }
}

/**
 * A parameter (`:id`, `:id(^\\d+)`, one level of parentheses inside its pattern) or an
 * escaped colon (`::`), as find-my-way reads a path.
 */
const PARAMETER = /(::|:[^/.\-(:]*(?:\((?:[^()]|\([^()]*\))*\))?)/

/**
 * A path as the router tells routes apart: parameters by position and pattern, not name
 * (`/u/:id` and `/u/:userId` are one route); with `caseSensitive: false`, the rest in lower
 * case; with `ignoreDuplicateSlashes`, `//` as `/`.
 */
export function routerPath (path: string, matching: RouterMatching): string {
  const collapsed = matching.ignoreDuplicateSlashes ? path.replace(/\/\/+/g, '/') : path
  return collapsed.split(PARAMETER).map((part, i) => {
    if (i % 2 === 1) return part === '::' ? part : `:${part.slice(part.indexOf('(') === -1 ? part.length : part.indexOf('('))}`
    return matching.caseSensitive ? part : part.toLowerCase()
  }).join('')
}

/**
 * One derived route per path and constraints, however many routes declare it (`POST
 * /files` and `PUT /files` share `/files/tus`; so do `/u/:id/files` and `/u/:userId/files`,
 * one path to the router). Routes that share one must declare it alike: the same hooks,
 * options and upload configs; else startup fails naming both.
 */
export class DerivedRoutes {
  readonly #origins = new Map<string, Origin>()
  readonly #matching: RouterMatching

  constructor (matching: RouterMatching) {
    this.#matching = matching
  }

  /**
   * Claims the route's path plus `suffix` for a route it derives, serving `configs`:
   * returns the path to register it at (under the route's prefix), or undefined if there
   * is none to register: the route derives nothing (a HEAD route), or a route on its path
   * derived it first (and shares it).
   */
  derive (upload: UploadRoute, suffix: string, what: string, configs: Map<string, ResolvedConfig>): string | undefined {
    const { options: route, where } = upload
    // Fastify's automatic HEAD route for a GET route comes through here too; it carries
    // no body, so derives nothing (nor does a HEAD route of the app's own).
    if (route.method === 'HEAD') return undefined
    // The router allows a wildcard last only: `/files/*/tus` is no path.
    if (route.url.endsWith('*')) {
      throw new InvalidConfigError(`${where} has a wildcard path, under which its channel and resumable endpoint cannot be: declare the upload route on a path without one, or with channel: false and no resumable upload`)
    }
    const origin = { where, instance: upload.instance, constraints: route.constraints, carried: upload.carried, configs, routeConfigs: upload.configs }
    return this.#claim(pathWithSuffix(route.url, suffix), what, origin) ? pathWithSuffix(route.routePath, suffix) : undefined
  }

  /**
   * True if `origin` is the first to derive `url` (the caller registers it). A later
   * route declaring it alike shares it, and takes the first route's config objects for
   * the names it serves, so that an entry from the shared route is claimable on both.
   */
  #claim (url: string, what: string, origin: Origin): boolean {
    const key = `${routerPath(url, this.#matching)} ${constraintsKey(origin.constraints)}`
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
