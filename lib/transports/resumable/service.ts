// What every transport whose uploads live across requests shares (the resumable endpoint,
// and the channel's resumable entries): one registry of uploads per plugin instance, the
// settings their lifecycle needs, and the warning, once per upload config, that a writer
// without checkpoint() and restore() ends its uploads with the process.
import type { FastifyBaseLogger } from 'fastify'
import type { PluginSettings, ResolvedConfig } from '../../config.js'
import type { EntryFailure } from '../../errors.js'
import type { RefStore } from '../../refs.js'
import type { Store, UploadRecord } from '../../stores/store.js'
import { TmpFileWriter, type TmpFileOptions } from '../../writers/tmp-file.js'
import type { EndpointContext, ResumableSettings } from './context.js'
import { ResumableRegistry } from './registry.js'

export interface ResumableServiceOptions {
  settings: PluginSettings
  refs: RefStore
  store: Store
  tmpFiles: TmpFileOptions
  abandonRecord: (record: UploadRecord) => Promise<void>
  log: FastifyBaseLogger
}

export class ResumableService {
  /** Resumable uploads in progress, across requests and transports. */
  readonly registry: ResumableRegistry
  readonly #options: ResumableServiceOptions
  readonly #log: FastifyBaseLogger
  /** Upload configs already said to be unable to continue after a restart. */
  readonly #notDurable = new Set<string>()
  #shutdown: Promise<void> | undefined

  constructor (options: ResumableServiceOptions) {
    this.#options = options
    this.#log = options.log
    this.registry = new ResumableRegistry(options.settings.maxResumableUploads, options.log)
  }

  /** What the handlers of one route's uploads share: its configs (`where`: the route, for messages). */
  context (configs: ReadonlyMap<string, ResolvedConfig>, where: string): EndpointContext {
    return { configs, registry: this.registry, settings: this.#settings(where) }
  }

  #settings (where: string): ResumableSettings {
    const { settings, refs, store, tmpFiles, abandonRecord } = this.#options
    return {
      refs,
      store,
      abandonRecord,
      notDurable: (config) => this.#warnNotDurable(config, where),
      owner: settings.owner,
      expiry: settings.resumableExpiry,
      maxLifetime: settings.resumableMaxLifetime,
      staging: TmpFileWriter,
      stagingOptions: tmpFiles
    }
  }

  /** Once per upload config: its writer has no checkpoint and restore, so its uploads end with this process. */
  #warnNotDurable (config: ResolvedConfig, where: string): void {
    if (this.#notDurable.has(config.key)) return
    this.#notDurable.add(config.key)
    this.#log.warn({ uploadName: config.uploadName, config: config.key }, `resumable uploads of "${config.uploadName}" of ${where} cannot continue after a restart: their writer has no checkpoint() and restore()`)
  }

  /**
   * Shutdown: no new upload; what writes to one stops; unfinished durable uploads are saved
   * and kept for the next process, others cancelled.
   */
  shutdown (reason: EntryFailure): Promise<void> {
    // Once: the plugin and the channel (which waits for it before closing its sockets) share it.
    this.#shutdown ??= this.registry.shutdown(reason)
    return this.#shutdown
  }
}
