// What outlived its purpose in the store goes: expired resumable uploads' records and
// parked entries (and their temp files), periodically; and at start, the temp files a
// process that died left in the store's directory (cut single-request uploads, channel
// entries), which no record or parked entry names.
import type { FastifyBaseLogger } from 'fastify'
import type { JsonValue, WriterSnapshot } from '../types/index.js'
import type { ResolvedConfig } from './config.js'
import type { ParkedEntry, Store, UploadRecord } from './stores/store.js'
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

  /** At start: what expired goes, then the temp files no record or parked entry names; then a sweep every SWEEP_INTERVAL. */
  async start (): Promise<void> {
    await this.sweep()
    const { store, tmpFiles, log } = this.#options
    if (store.dir !== undefined) {
      const snapshots = [...(await store.uploads()), ...(await store.parked())].map((item) => item.snapshot)
      const named = new Set(snapshots.map((snapshot) => (snapshot as { path?: unknown }).path).filter((path) => typeof path === 'string'))
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

  /** Expired upload records and parked entries leave the store; each one's writer cleans up where the plugin can tell it. */
  async sweep (now = Date.now()): Promise<void> {
    const { uploads, parked } = await this.#options.store.sweep(now)
    await Promise.all([...uploads.map(async (record) => await this.abandon(record)), ...parked.map(async (entry) => await this.abandonParked(entry))])
  }

  /** A record whose upload ended without its writer (it expired in the store, or its writer could not be restored): see `#cleanUp`. Never rejects. */
  async abandon (record: UploadRecord): Promise<void> {
    await this.#cleanUp({ ref: record.id, configKey: record.configKey, snapshot: record.snapshot, staged: record.concat === 'partial' }, { ended: 'an ended resumable upload', ending: 'a resumable upload' })
  }

  /**
   * A finished entry kept in the store, let go without its writer (consumed or dropped
   * after a restart, or expired in the store): see `#cleanUp`. Never rejects.
   */
  async abandonParked (entry: ParkedEntry): Promise<void> {
    await this.#cleanUp({ ref: entry.ref, configKey: entry.configKey, snapshot: entry.snapshot, staged: false }, { ended: 'a finished upload kept across a restart', ending: 'a finished upload kept across a restart' })
  }

  /**
   * Cleans up after an upload whose writer state is gone, from its snapshot. Written with
   * the plugin's temp-file writer (the default, or a staged partial): its file is removed,
   * if the snapshot names one that writer made. Another writer is chosen per request by
   * the route's factory, which cannot run without one: what its snapshot names is logged
   * and left as it is. Never rejects. `words`: what the logs call it.
   */
  async #cleanUp (ended: { ref: string, configKey: string, snapshot: JsonValue, staged: boolean }, words: { ended: string, ending: string }): Promise<void> {
    const { configs, defaultWriter, tmpFiles, log } = this.#options
    if (ended.staged || configs.get(ended.configKey)?.writer === defaultWriter) {
      await removeSnapshotFile(ended.snapshot as WriterSnapshot, tmpFiles).catch((err: unknown) => {
        log.warn({ err, ref: ended.ref }, `the temp file of ${words.ended} could not be removed`)
      })
      return
    }
    log.warn({ ref: ended.ref, snapshot: ended.snapshot }, `${words.ending} ended without its writer, which was not told (it is chosen per request): what its snapshot names is left as it is`)
  }
}
