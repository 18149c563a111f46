// Client silence: a timer that counts only while the transport waits for wire bytes.
// It is suspended while a writer call is in flight, so a slow writer never counts
// as a silent client.
export class SilenceTimer {
  readonly #timer: NodeJS.Timeout
  #suspended = false
  #stopped = false

  constructor (ms: number, onSilence: (ms: number) => void) {
    this.#timer = setTimeout(() => {
      if (this.#suspended || this.#stopped) return
      this.#stopped = true
      onSilence(ms)
    }, ms)
  }

  /** Bytes arrived: start counting again. */
  heard (): void {
    if (!this.#suspended && !this.#stopped) this.#timer.refresh()
  }

  /** Waits for `work` (a writer call) with the timer suspended. */
  async whileBusy<T> (work: Promise<T>): Promise<T> {
    this.#suspended = true
    try {
      return await work
    } finally {
      this.#suspended = false
      this.heard()
    }
  }

  stop (): void {
    this.#stopped = true
    clearTimeout(this.#timer)
  }
}
