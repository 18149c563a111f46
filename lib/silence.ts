// Client silence: a timer that counts only while the plugin waits for the client's
// bytes. Whoever hands bytes to a writer suspends it for the call and resumes it after,
// so a slow writer never counts as a silent client (writerTimeout bounds the writer).
export class SilenceTimer {
  readonly #timer: NodeJS.Timeout
  readonly #ms: number
  readonly #onSilence: (ms: number) => void
  #suspended = false
  #stopped = false

  /**
   * Starts counting now. `onSilence` runs when `ms` pass with the timer counting; the
   * timer then stays quiet until `heard` or `resume` counts again (or `stop`).
   */
  constructor (ms: number, onSilence: (ms: number) => void) {
    this.#ms = ms
    this.#onSilence = onSilence
    this.#timer = setTimeout(this.#fire, ms)
  }

  readonly #fire = (): void => {
    // Went off while suspended: `resume` counts again from zero.
    if (this.#suspended || this.#stopped) return
    this.#onSilence(this.#ms)
  }

  /** Bytes arrived: count again from zero. */
  heard (): void {
    if (!this.#suspended && !this.#stopped) this.#timer.refresh()
  }

  /** A writer call is in flight: the client's silence does not count. */
  suspend (): void {
    this.#suspended = true
  }

  /** The writer call settled: the plugin waits for the client again, from zero. */
  resume (): void {
    this.#suspended = false
    this.heard()
  }

  /** Waits for `work` (a writer call that is not a chunk: init, validate, close) with the timer suspended. */
  async whileBusy<T> (work: Promise<T>): Promise<T> {
    this.suspend()
    try {
      return await work
    } finally {
      this.resume()
    }
  }

  stop (): void {
    this.#stopped = true
    clearTimeout(this.#timer)
  }
}
