// A TCP proxy on 127.0.0.1 between a client and the server, for uploads interrupted at
// any byte. Its plan places faults on the traffic as a whole: a fault `after: n` in a
// direction (`up`: client to server, `down`: server to client) strikes the connection
// that carries that direction's n-th byte (counted over every connection, in the order
// the bytes cross), whichever request it is in. A `cut` forwards the bytes before it and
// destroys both sockets; a `stall` forwards nothing more and keeps both open, as a dead
// network leaves a connection (half-open), until close().
import { connect, createServer, type Server, type Socket } from 'node:net'

export interface Fault {
  direction: 'up' | 'down'
  /** Bytes of that direction forwarded, over all connections, before the fault. */
  after: number
  kind: 'cut' | 'stall'
}

export interface ProxyStats {
  connections: number
  /** Faults that struck. */
  faults: number
  /** Bytes forwarded in each direction. */
  up: number
  down: number
}

interface Connection { both: Socket[], stalled: boolean }

export class FaultProxy {
  readonly port: number
  readonly stats: ProxyStats = { connections: 0, faults: 0, up: 0, down: 0 }
  readonly #server: Server
  /** Faults still to strike, per direction, earliest first. */
  readonly #pending: Record<'up' | 'down', Fault[]>
  readonly #sockets = new Set<Socket>()

  private constructor (server: Server, port: number, plan: Fault[]) {
    this.#server = server
    this.port = port
    const sorted = [...plan].sort((a, b) => a.after - b.after)
    this.#pending = { up: sorted.filter((f) => f.direction === 'up'), down: sorted.filter((f) => f.direction === 'down') }
  }

  /** Listens on 127.0.0.1 (a free port) and forwards to `targetPort` there. */
  static async start (targetPort: number, plan: Fault[] = []): Promise<FaultProxy> {
    const made: { proxy?: FaultProxy } = {}
    const server = createServer((client) => made.proxy!.#accept(client, targetPort))
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const address = server.address()
    made.proxy = new FaultProxy(server, typeof address === 'object' && address !== null ? address.port : 0, plan)
    return made.proxy
  }

  get url (): string { return `http://127.0.0.1:${this.port}` }

  /** Faults that have not struck (the traffic ended before their byte). */
  get unstruck (): number { return this.#pending.up.length + this.#pending.down.length }

  /** Ends every connection (stalled ones too) and stops listening. */
  async close (): Promise<void> {
    for (const socket of this.#sockets) socket.destroy()
    await new Promise<void>((resolve) => this.#server.close(() => resolve()))
  }

  #accept (client: Socket, targetPort: number): void {
    this.stats.connections++
    const upstream = connect(targetPort, '127.0.0.1')
    const connection: Connection = { both: [client, upstream], stalled: false }
    for (const socket of connection.both) {
      this.#sockets.add(socket)
      socket.on('error', () => {})
      socket.once('close', () => {
        this.#sockets.delete(socket)
        // One side gone: so is the other, as through a real proxy. Unless the connection
        // stalled: then the other side never learns of it (half-open) until close().
        if (!connection.stalled) for (const other of connection.both) other.destroy()
      })
    }
    this.#forward(client, upstream, 'up', connection)
    this.#forward(upstream, client, 'down', connection)
  }

  /** Copies `from` to `to` with backpressure, counting bytes, until a fault strikes. */
  #forward (from: Socket, to: Socket, direction: 'up' | 'down', connection: Connection): void {
    let struck: Fault | undefined
    from.on('data', (chunk: Buffer) => {
      if (connection.stalled || struck !== undefined) {
        from.pause()
        return
      }
      let piece = chunk
      const next = this.#pending[direction][0]
      if (next !== undefined && this.stats[direction] + chunk.length >= next.after) {
        piece = chunk.subarray(0, Math.max(0, next.after - this.stats[direction]))
        struck = this.#pending[direction].shift()!
        this.stats.faults++
      }
      this.stats[direction] += piece.length
      const strike = (): void => {
        if (struck === undefined) return
        if (struck.kind === 'cut') {
          for (const socket of connection.both) socket.destroy()
          return
        }
        // A stall: nothing more crosses, in either direction, but both stay open.
        connection.stalled = true
        for (const socket of connection.both) socket.pause()
      }
      if (piece.length === 0) return strike()
      if (!to.write(piece, strike) && struck === undefined) {
        from.pause()
        to.once('drain', () => { if (!connection.stalled) from.resume() })
      }
    })
    from.once('end', () => { if (struck === undefined && !connection.stalled) to.end() })
  }
}
