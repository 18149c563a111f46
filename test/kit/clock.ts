// Time under the test's control, for tests whose subject is time (timeouts, expiry):
// the global timers and Date are fake, advanced only by `await clock.tickAsync(ms)`.
// Node's net and http internals do not use these globals, so real sockets still work;
// the kit's own waits (node:timers, node:timers/promises, bound at import) stay real.
import FakeTimers from '@sinonjs/fake-timers'
import type { Test } from 'tap'

export type Clock = ReturnType<typeof FakeTimers.install> & {
  /** Puts the real timers and Date back; idempotent, and done at teardown anyway. */
  restore: () => void
}

/**
 * Installs fake timers and Date for the rest of `t`, or until `clock.restore()`. The
 * plugin's timers are fake only if set after this: install it before what it should
 * govern. Date starts at the real time (so dates the server sends, Upload-Expires,
 * look real) and moves only with the clock.
 */
export function fakeClock (t: Test): Clock {
  const clock = FakeTimers.install({ now: Date.now(), toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] })
  let installed = true
  const restore = (): void => {
    if (installed) clock.uninstall()
    installed = false
  }
  t.teardown(restore)
  return Object.assign(clock, { restore })
}
