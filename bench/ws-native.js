// Whether ws, in this process, masks and unmasks frames with bufferutil's native
// code. ws requires bufferutil (an optional dependency) when it loads and silently
// falls back to JavaScript loops when it cannot; this says which one it got.
import http from 'node:http'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const cached = (pattern) => Object.keys(require.cache).find((key) => pattern.test(key))

/** 'native', 'fallback' (bufferutil's JS), 'node' (node:http's own), 'absent', 'disabled' or 'ws not loaded', with evidence. */
export function bufferutilStatus () {
  if (cached(/[\\/]ws[\\/]lib[\\/]buffer-util\.js$/) === undefined) return { status: 'ws not loaded' }
  // ws ≥ 8.18 prefers Node's own masking functions where Node has them.
  if (typeof http.websocketMask === 'function') return { status: 'node' }
  if (process.env.WS_NO_BUFFER_UTIL) return { status: 'disabled' }
  const index = cached(/[\\/]bufferutil[\\/]index\.js$/)
  if (index === undefined) return { status: 'absent' }
  let mapped
  try {
    // The shared object really is mapped into this process.
    mapped = readFileSync('/proc/self/maps', 'utf8').split('\n').map((line) => line.split(/\s+/).at(-1)).find((file) => file.endsWith('bufferutil.node'))
  } catch {
    mapped = cached(/bufferutil\.node$/)
  }
  const native = mapped !== undefined && /\[native code\]/.test(String(require.cache[index].exports.mask))
  return native ? { status: 'native', file: mapped } : { status: 'fallback' }
}
