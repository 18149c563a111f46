// The resumable endpoint as the plugin uses it: one endpoint per upload route, one
// registry of uploads per plugin instance, and what the routes around them need to know.
export { ResumableEndpoint } from './endpoint.js'
export type { ResumableSettings } from './context.js'
export { ResumableRegistry, goneError } from './registry.js'
export { EXPOSED_HEADERS } from './wire.js'
export { TUS_VERSION, idOfUrl } from './headers.js'
