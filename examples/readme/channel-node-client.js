// Node 20: a photo from disk, over the channel of the app in "The WebSocket channel", with a cancel after 30 s.
import { openAsBlob } from 'node:fs'
import { WebSocket } from 'ws'
import { upload } from 'fastify-chunked-upload/client'

const server = process.env.SERVER ?? 'http://127.0.0.1:3000'
const file = new File([await openAsBlob('photo.jpg')], 'photo.jpg', { type: 'image/jpeg' })
const result = await upload(`${server}/photos`, [file], {
  uploadName: 'photos', WebSocket, submit: true, signal: AbortSignal.timeout(30_000), headers: { authorization: 'Bearer secret' }
})
console.log(result.files, result.response)   // [{ name: 'photo.jpg', ok: true, ref }] [{ name: 'photo.jpg', size }]
