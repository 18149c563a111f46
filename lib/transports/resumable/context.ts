// What every handler of one route's resumable endpoint shares: the route's resumable
// upload configs, the plugin's registry of uploads, and the plugin's settings.
import type { UploadWriter } from '../../../types/index.js'
import type { OwnerFn, ResolvedConfig } from '../../config.js'
import type { RefStore } from '../../refs.js'
import type { Store, UploadRecord } from '../../stores/store.js'
import type { ResumableRegistry } from './registry.js'

export interface ResumableSettings {
  refs: RefStore
  /** Where durable uploads' records are kept. */
  store: Store
  /** A record whose upload ended without its writer: what the plugin's own writer left is removed. */
  abandonRecord: (record: UploadRecord) => Promise<void>
  /** Told once per upload config whose writer cannot checkpoint and restore (its uploads do not survive a restart). */
  notDurable: (config: ResolvedConfig) => void
  owner: OwnerFn
  expiry: number
  maxLifetime: number
  /** Where partial uploads are staged until their final upload concatenates them. */
  staging: UploadWriter
  stagingOptions: unknown
}

export interface EndpointContext {
  readonly configs: ReadonlyMap<string, ResolvedConfig>
  readonly registry: ResumableRegistry
  readonly settings: ResumableSettings
}
