// Upload locks held in this process: one holder per id, a line of waiters behind it. A
// waiter asks the holder to stop and gives it `timeout` ms to release; past that the
// holder is presumed dead and the waiter takes over. Tokens come from one counter, so
// they grow per id and a holder that was taken over is told apart from the newer one.
import type { HeldLock } from './store.js'

interface Waiter {
  onStopRequested: () => void
  timeout: number
  grant: (lock: HeldLock) => void
  timer: NodeJS.Timeout | undefined
}

/** An id's lock, while someone holds it. */
interface Line {
  holder: { token: number, onStopRequested: () => void }
  waiters: Waiter[]
}

export class Locks {
  readonly #lines = new Map<string, Line>()
  #lastToken = 0

  async lock (id: string, onStopRequested: () => void, timeout: number): Promise<HeldLock> {
    const line = this.#lines.get(id)
    if (line === undefined) return this.#grant(id, onStopRequested)
    return await new Promise((resolve) => {
      line.waiters.push({ onStopRequested, timeout, grant: resolve, timer: undefined })
      // Later waiters wait their turn: the holder was already asked.
      if (line.waiters.length === 1) this.#askHolder(id, line)
    })
  }

  /** Whether `token` is the lock's current holder. */
  holds (id: string, token: number): boolean {
    return this.#lines.get(id)?.holder.token === token
  }

  /** Whether anyone holds or awaits the lock. */
  busy (id: string): boolean {
    return this.#lines.has(id)
  }

  #grant (id: string, onStopRequested: () => void): HeldLock {
    const token = ++this.#lastToken
    const line = this.#lines.get(id)
    if (line === undefined) this.#lines.set(id, { holder: { token, onStopRequested }, waiters: [] })
    else line.holder = { token, onStopRequested }
    return { token, release: async () => this.#release(id, token) }
  }

  #askHolder (id: string, line: Line): void {
    const head = line.waiters[0]!
    head.timer = setTimeout(() => this.#handOver(id, line), head.timeout)
    try {
      line.holder.onStopRequested()
    } catch {
      // Its failure is the holder's own: like a holder that does not answer, it is left to the timeout.
    }
  }

  /** The first waiter takes the lock (released, or its holder presumed dead); the next asks it to stop. */
  #handOver (id: string, line: Line): void {
    const head = line.waiters.shift()!
    clearTimeout(head.timer)
    head.grant(this.#grant(id, head.onStopRequested))
    if (line.waiters.length > 0) this.#askHolder(id, line)
  }

  #release (id: string, token: number): void {
    const line = this.#lines.get(id)
    if (line?.holder.token !== token) return
    if (line.waiters.length === 0) this.#lines.delete(id)
    else this.#handOver(id, line)
  }
}
