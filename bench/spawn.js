// Starting contender servers as child processes, shared by bench/run.js and
// bench/patch-overhead.js. Every child is killed if this process exits, fails or is
// signalled, and its upload dir removed. (A server also exits by itself when its stdin
// closes.)
import { spawn } from 'node:child_process'
import { mkdirSync, rmSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))

const children = new Map() // child → its upload dir, once known
export function killAll () {
  for (const [child, dir] of children) {
    child.kill('SIGKILL')
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  }
  children.clear()
}
process.on('exit', killAll)
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    killAll()
    process.exit(130)
  })
}

/**
 * Starts `bench/servers/<contender.server>` with the contender's env; resolves once it
 * printed its port. `cpuProf`: run it with --cpu-prof into bench/results/profiles/<label>.cpuprofile.
 * `execArgv`: more Node flags (diagnosis).
 */
export async function startServer (contender, label, { cpuProf = false, execArgv = [] } = {}) {
  const args = [...execArgv]
  if (cpuProf) {
    const dir = join(here, 'results', 'profiles')
    mkdirSync(dir, { recursive: true })
    args.push('--cpu-prof', `--cpu-prof-dir=${dir}`, `--cpu-prof-name=${label}.cpuprofile`)
  }
  const child = spawn(process.execPath, [...args, join(here, 'servers', contender.server)], {
    stdio: ['pipe', 'pipe', 'inherit'],
    env: { ...process.env, ...contender.env, BENCH_PARENT: '1' }
  })
  children.set(child, undefined)
  let dir
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => {
    children.delete(child)
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
    resolve({ code, signal })
  }))
  const lines = createInterface({ input: child.stdout })
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${contender.server}: no port within 15 s`)), 15_000)
    lines.once('line', (line) => {
      clearTimeout(timer)
      try {
        const hello = JSON.parse(line)
        dir = hello.dir
        if (children.has(child)) children.set(child, dir)
        resolve(hello.port)
      } catch {
        reject(new Error(`${contender.server}: unexpected first line ${JSON.stringify(line)}`))
      }
    })
    exited.then(({ code, signal }) => reject(new Error(`${contender.server} exited (${code ?? signal}) before listening`)))
  })
  lines.on('line', (line) => process.stderr.write(`[${contender.server}] ${line}\n`))
  return {
    port,
    pid: child.pid,
    async stop () {
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
      const result = await exited
      clearTimeout(timer)
      return result
    }
  }
}
