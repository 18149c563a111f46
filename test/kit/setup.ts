// The test set-up, tap's `before` script (package.json, "tap"): installs the Debian
// packages the tests need (test/kit/system-packages.ts) when their binaries are missing,
// so that `npm install` + `npm test` is all a fresh machine needs. As root it runs
// apt-get; otherwise it prints the one command to run and fails the run: the tests
// that need a package never skip.
//
// FCU_SETUP_DRY_RUN=1 prints what it would run, and runs nothing.
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { SYSTEM_PACKAGES } from './system-packages.js'

const missing = SYSTEM_PACKAGES.filter((pkg) => !existsSync(pkg.binary))
if (missing.length > 0) install()

function install (): void {
  const names = missing.map((pkg) => pkg.name)
  const commands = [['apt-get', 'update', '-qq'], ['apt-get', 'install', '-y', '-qq', '--no-install-recommends', ...names]]
  const needs = missing.map((pkg) => `${pkg.binary} (Debian package ${pkg.name}, for ${pkg.neededBy})`).join('\n  ')
  const dryRun = process.env.FCU_SETUP_DRY_RUN === '1'
  const isRoot = process.getuid?.() === 0

  if (!isRoot && !dryRun) {
    fail(`The tests need, and cannot find:\n  ${needs}\nInstall with:\n\n  sudo apt-get install -y --no-install-recommends ${names.join(' ')}\n`)
  }
  console.error(`test set-up: installing ${names.join(', ')}, for:\n  ${needs}`)
  for (const [command, ...args] of commands) {
    console.error(`test set-up: ${dryRun ? 'would run' : 'running'} DEBIAN_FRONTEND=noninteractive ${command} ${args.join(' ')}`)
    if (dryRun) continue
    const run = spawnSync(command!, args, { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } })
    if (run.error !== undefined) fail(`${command} could not run (${run.error.message}): install ${names.join(' ')} by hand.`)
    if (run.status !== 0) fail(`${command} ${args.join(' ')} failed (exit ${run.status ?? run.signal}).`)
  }
  if (dryRun) return
  const stillMissing = missing.filter((pkg) => !existsSync(pkg.binary))
  if (stillMissing.length > 0) fail(`installed, but still missing: ${stillMissing.map((pkg) => pkg.binary).join(', ')}`)
}

function fail (message: string): never {
  console.error(`\ntest set-up FAILED: ${message}`)
  process.exit(1)
}
