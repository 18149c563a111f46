// Summarises a V8 .cpuprofile (from BENCH_CPU_PROF=1): self time by function and by
// file, and inclusive time of selected frames.
//   node bench/profile-summary.js bench/results/profiles/chunked-upload-A-r1.cpuprofile [top=25]
import { readFileSync } from 'node:fs'

const [file, topArg] = process.argv.slice(2)
if (file === undefined) {
  console.error('usage: node bench/profile-summary.js <file.cpuprofile> [top]')
  process.exit(2)
}
const top = Number(topArg ?? 25)
const profile = JSON.parse(readFileSync(file, 'utf8'))
const byId = new Map(profile.nodes.map((n) => [n.id, n]))
const parent = new Map()
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)

// Sample counts weighted by time deltas.
const self = new Map()
for (let i = 0; i < profile.samples.length; i++) {
  const id = profile.samples[i]
  self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0))
}
const total = [...self.values()].reduce((a, b) => a + b, 0)
const short = (url) => url.replace(/^file:\/\//, '').replace(/.*node_modules\//, '').replace(/^\/work\/main\//, '')
const frameName = (n) => `${n.callFrame.functionName || '(anonymous)'} ${short(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`

const fnSelf = new Map()
const fileSelf = new Map()
const inclusive = new Map()
for (const [id, t] of self) {
  const n = byId.get(id)
  const name = n.callFrame.url === '' ? n.callFrame.functionName || '(anonymous)' : frameName(n)
  fnSelf.set(name, (fnSelf.get(name) ?? 0) + t)
  const f = n.callFrame.url === '' ? `(${n.callFrame.functionName})` : short(n.callFrame.url)
  fileSelf.set(f, (fileSelf.get(f) ?? 0) + t)
  // inclusive: count once per distinct frame name on the stack
  const seen = new Set()
  for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
    const cn = byId.get(cur)
    const key = cn.callFrame.url === '' ? cn.callFrame.functionName || '(anonymous)' : frameName(cn)
    if (seen.has(key)) continue
    seen.add(key)
    inclusive.set(key, (inclusive.get(key) ?? 0) + t)
  }
}
const pct = (t) => `${((100 * t) / total).toFixed(1).padStart(5)}%`
const print = (title, map) => {
  console.log(`\n${title}`)
  for (const [k, t] of [...map].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${pct(t)}  ${(t / 1e6).toFixed(2).padStart(6)} s  ${k}`)
}
console.log(`${file}: ${(total / 1e6).toFixed(2)} s sampled`)
print('self time by function', fnSelf)
print('self time by file', fileSelf)
print('inclusive time by function', inclusive)
