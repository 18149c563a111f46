// What the tests need from the system beyond node_modules: Debian packages, each with
// the binary the tests run from it. The test set-up (test/kit/setup.ts, tap's `before`)
// installs the missing ones; the tests take their paths from here.
export interface SystemPackage {
  /** The Debian package. */
  name: string
  /** The binary the tests run; it is missing when this path does not exist. */
  binary: string
  /** Which tests need it, for the message when it cannot be installed. */
  neededBy: string
}

export const CHROMIUM: SystemPackage = {
  name: 'chromium', binary: '/usr/bin/chromium', neededBy: 'the browser tests (test/browser*.test.ts)'
}

export const SYSTEM_PACKAGES: SystemPackage[] = [CHROMIUM]
