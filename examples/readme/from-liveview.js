import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import chunkedUpload, { defineWriter } from 'fastify-chunked-upload'

// LiveView's EchoWriter: init/1, meta/1, write_chunk/2, close/2.
const EchoWriter = defineWriter({
  init ({ log }) {                                  // {:ok, state}; to fail, throw
    return { log, total: 0 }
  },
  meta (state) {                                    // what consume's callback gets as meta
    return { total: state.total }
  },
  writeChunk (data, state) {                        // {:ok, state}; {:error, reason, state} is a throw
    state.log.info(`received chunk of ${data.length} bytes`)
    return { ...state, total: state.total + data.length }
  },
  close (state, reason) {                           // reason: 'done', 'cancel' or { error }
    state.log.info({ reason }, `closing upload after ${state.total} bytes`)
    return state
  }
})

const app = Fastify({ logger: true })
await app.register(chunkedUpload, { channel: true })  // the LiveView socket's upload channel
await app.register(websocket)

// allow_upload(socket, :avatar, accept: ~w(.jpg .jpeg), max_entries: 2, writer: ..., progress: ...)
app.post('/profile', {
  allowUpload: {
    avatar: {
      accept: ['.jpg', '.jpeg'],
      maxEntries: 2,
      writer: (name, entry, request) => [EchoWriter, { log: request.log }],
      progress: (name, entry) => { if (entry.status === 'done') app.log.info(`${entry.clientName} uploaded`) }
    }
  }
}, async (request) => {
  // consume_uploaded_entries(socket, :avatar, fn meta, entry -> {:ok, value} end)
  return await request.uploads.consume('avatar', (meta, entry) => ({ name: entry.clientName, bytes: meta.total }))
})

await app.listen({ port: Number(process.env.PORT ?? 3000) })
