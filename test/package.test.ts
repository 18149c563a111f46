// What the published package carries: the files a user installs (its licence among them),
// and Fastify as a peer, so an app's own Fastify 5 is the one the plugin runs in (no second
// copy nested under the plugin).
import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { promisify } from 'node:util'
import t from 'tap'

const run = promisify(execFile)

t.test('the tarball carries the built code, the docs and the MIT licence', async (t) => {
  const { stdout } = await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: process.cwd() })
  const [pack] = JSON.parse(stdout) as Array<{ files: Array<{ path: string }> }>
  const files = pack!.files.map((file) => file.path)
  for (const path of ['LICENSE', 'README.md', 'PROTOCOL.md', 'ARCHITECTURE.md', 'package.json', 'dist/lib/index.js', 'dist/lib/index.d.ts', 'dist/client/index.js']) {
    t.ok(files.includes(path), `${path} is in the tarball`)
  }
  t.notOk(files.some((path) => path.startsWith('test/') || path.startsWith('lib/') || path.startsWith('bench/')), 'no sources, tests or benchmarks')
  t.match(await readFile('LICENSE', 'utf8'), /^MIT License/)
})

t.test('Fastify is a peer dependency (any 5.x), never a dependency of its own', async (t) => {
  const manifest = JSON.parse(await readFile('package.json', 'utf8')) as { dependencies?: Record<string, string>, peerDependencies?: Record<string, string>, description: string }
  t.equal(manifest.dependencies?.fastify, undefined)
  t.equal(manifest.peerDependencies?.fastify, '^5.0.0')
  t.match(manifest.description, /tus/)
})
