// The store of one process, in memory: what the plugin kept before stores existed, now
// behind the `Store` interface. Records are kept as JSON text, as a remote store keeps
// them, so no caller ever shares an object with the store.
import { UploadExistsError, UploadNotFoundError } from '../errors.js'
import { Locks } from './locks.js'
import { applyChange, claimableBy, decodeParked, decodeUpload, type Expired, type HeldLock, type ParkedEntry, type Store, type UploadChange, type UploadRecord } from './store.js'

export class MemoryStore implements Store {
  readonly #uploads = new Map<string, string>()
  readonly #parked = new Map<string, string>()
  readonly #locks = new Locks()

  async createUpload (record: UploadRecord): Promise<void> {
    if (this.#uploads.has(record.id)) throw new UploadExistsError(record.id)
    this.#uploads.set(record.id, JSON.stringify(record))
  }

  async getUpload (id: string): Promise<UploadRecord | undefined> {
    const text = this.#uploads.get(id)
    return text === undefined ? undefined : decodeUpload(text)
  }

  async updateUpload (id: string, expected: { offset: number, token: number }, change: UploadChange): Promise<UploadRecord> {
    const text = this.#uploads.get(id)
    if (text === undefined) throw new UploadNotFoundError()
    const updated = applyChange(decodeUpload(text), expected, change, this.#locks.holds(id, expected.token))
    this.#uploads.set(id, JSON.stringify(updated))
    return updated
  }

  async uploads (): Promise<UploadRecord[]> {
    return [...this.#uploads.values()].map(decodeUpload)
  }

  async deleteUpload (id: string): Promise<boolean> {
    return this.#uploads.delete(id)
  }

  async lock (id: string, onStopRequested: () => void, timeout: number): Promise<HeldLock> {
    return await this.#locks.lock(id, onStopRequested, timeout)
  }

  async parked (): Promise<ParkedEntry[]> {
    return [...this.#parked.values()].map(decodeParked)
  }

  async park (entry: ParkedEntry): Promise<void> {
    this.#parked.set(entry.ref, JSON.stringify(entry))
  }

  async claim (ref: string, owner: string | undefined, configKey: string): Promise<ParkedEntry | undefined> {
    const text = this.#parked.get(ref)
    if (text === undefined) return undefined
    const entry = decodeParked(text)
    if (!claimableBy(entry, owner, configKey)) return undefined
    this.#parked.delete(ref)
    return entry
  }

  async forget (ref: string): Promise<boolean> {
    return this.#parked.delete(ref)
  }

  async sweep (now: number): Promise<Expired> {
    const uploads: UploadRecord[] = []
    for (const [id, text] of this.#uploads) {
      const record = decodeUpload(text)
      if (record.expiresAt > now || this.#locks.busy(id)) continue
      this.#uploads.delete(id)
      uploads.push(record)
    }
    const parked: ParkedEntry[] = []
    for (const [ref, text] of this.#parked) {
      const entry = decodeParked(text)
      if (entry.expiresAt > now) continue
      this.#parked.delete(ref)
      parked.push(entry)
    }
    return { uploads, parked }
  }

  async close (): Promise<void> {}
}
