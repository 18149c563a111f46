// Time under the test's control, for tests whose subject is time (timeouts, expiry):
// the global timers and Date are fake, advanced only by `await clock.tickAsync(ms)`.
// Node's net and http internals do not use these globals, so real sockets still work;
// the kit's own waits (node:timers, node:timers/promises, bound at import) stay real.
import FakeTimers from '@sinonjs/fake-timers'
import type { Test } from 'tap'

export type Clock = FakeTimers.Clock

/** Installs fake timers for the rest of `t` (install it before the app, so the app's timers are fake too). */
export function fakeClock (t: Test): Clock {
  const clock = FakeTimers.install({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] })
  t.teardown(() => clock.uninstall())
  return clock
}
