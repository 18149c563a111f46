// Contender: a bare @fastify/websocket route, what a user would write without the
// plugin. Binary frames are appended to a file (fs.createWriteStream; the socket is
// paused while the file stream's buffer is full), a text frame "end" ends the file,
// then the server reads its size (stat), deletes it, answers {"size"} as a text
// frame and closes the socket. Any other end (client gone, write error) deletes the
// file too.
import { randomBytes } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { finished } from 'node:stream/promises'
import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import { makeTmpDir, serve } from './common.js'

const dir = makeTmpDir('bare-ws')
const app = Fastify()
await app.register(websocket)

app.get('/upload/ws', { websocket: true }, (socket) => {
  const path = join(dir, `upload-${randomBytes(16).toString('hex')}`)
  const file = createWriteStream(path, { flags: 'wx', mode: 0o600 })
  let ended = false
  let paused = false
  const fail = (error) => {
    ended = true
    file.destroy()
    socket.close(1011, String(error?.message ?? error).slice(0, 120))
  }
  file.on('error', fail)
  file.on('drain', () => {
    paused = false
    socket.resume()
  })
  socket.on('message', (data, isBinary) => {
    if (ended) return
    if (isBinary) {
      if (!file.write(data) && !paused) {
        paused = true
        socket.pause()
      }
      return
    }
    if (data.toString() !== 'end') return fail(new Error('unexpected text frame'))
    ended = true
    file.end()
    // A paused socket would never read the client's close frame ('drain' does not
    // come after end()); frames parsed from one read can arrive after pause().
    if (paused) {
      paused = false
      socket.resume()
    }
    finished(file)
      .then(() => stat(path))
      .then(async ({ size }) => {
        await rm(path, { force: true })
        socket.send(JSON.stringify({ size }))
        socket.close(1000)
      })
      .catch(fail)
  })
  // Whatever happened, the file does not outlive its socket.
  socket.once('close', () => {
    file.destroy()
    finished(file).catch(() => {}).finally(() => rm(path, { force: true }))
  })
})

await serve(app, dir)
