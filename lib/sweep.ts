// What outlived its purpose in the store goes: expired resumable uploads' records (and
// their temp files), periodically; and at start, the temp files a process that died
// left in the store's directory (cut single-request uploads, finished uploads nobody
// claimed), which no record names.
import type { FastifyBaseLogger } from 'fastify'
import type { WriterSnapshot } from '../types/index.js'
import type { ResolvedConfig } from './config.js'
import type { Store, UploadRecord } from './stores/store.js'
import { removeLeftovers, removeSnapshotFile, type TmpFileOptions } from './writers/tmp-file.js'

/** How often expired records are looked for, in ms. */
export const SWEEP_INTERVAL = 60_000

export interface SweepOptions {
  store: Store
  /** Upload configs by key, as routes declared them. */
  configs: ReadonlyMap<string, ResolvedConfig>
  /** The plugin's own writer factory (the temp-file writer): uploads written with it are cleaned up here. */
  defaultWriter: ResolvedConfig['writer']
  /** The options the plugin gives its temp-file writers. */
  tmpFiles: TmpFileOptions
  log: FastifyBaseLogger
}

export class Sweeper {
  readonly #options: SweepOptions
  #timer: NodeJS.Timeout | undefined

  constructor (options: SweepOptions) {
    this.#options = options
  }

  /** At start: what expired goes, then the temp files no record names; then a sweep every SWEEP_INTERVAL. */
  async start (): Promise<void> {
    await this.sweep()
    const { store, tmpFiles, log } = this.#options
    if (store.dir !== undefined) {
      const named = new Set((await store.uploads()).map((record) => (record.snapshot as { path?: unknown }).path).filter((path) => typeof path === 'string'))
      const removed = await removeLeftovers(store.dir, named)
      if (removed.length > 0) log.info({ files: removed.length, dir: tmpFiles.dir }, 'removed temp files a previous run left behind')
    }
    this.#timer = setInterval(() => { this.sweep().catch((err: unknown) => log.error({ err }, 'upload store sweep failed')) }, SWEEP_INTERVAL)
    // The sweep alone must not keep the process alive.
    this.#timer.unref()
  }

  stop (): void {
    clearInterval(this.#timer)
  }

  /** Expired upload records leave the store; each one's writer cleans up where the plugin can tell it. */
  async sweep (now = Date.now()): Promise<void> {
    const { uploads } = await this.#options.store.sweep(now)
    await Promise.all(uploads.map(async (record) => await this.abandon(record)))
  }

  /**
   * A record whose upload ended without its writer (it expired in the store, or its
   * writer could not be restored). Written with the plugin's temp-file writer (the
   * default, or a staged partial): its file is removed. Another writer is chosen per
   * request by the route's factory, which cannot run without one: what its snapshot
   * names is logged and left as it is. Never rejects.
   */
  async abandon (record: UploadRecord): Promise<void> {
    const { configs, defaultWriter, tmpFiles, log } = this.#options
    if (record.concat === 'partial' || configs.get(record.configKey)?.writer === defaultWriter) {
      await removeSnapshotFile(record.snapshot as WriterSnapshot, tmpFiles).catch((err: unknown) => {
        log.warn({ err, ref: record.id }, 'the temp file of an ended resumable upload could not be removed')
      })
      return
    }
    log.warn({ ref: record.id, snapshot: record.snapshot }, 'a resumable upload ended without its writer, which was not told (it is chosen per request): what its snapshot names is left as it is')
  }
}
