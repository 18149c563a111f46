// A resumable upload outlives the request that created it: its writer factory runs
// during the creation, its `progress` callback hears the request that carries its bytes
// now (the PATCH, or a creation with a body), and `undefined` when it changes outside
// any append (termination, expiry).
import t from 'tap'
import type { FastifyRequest } from 'fastify'
import type { UploadEntry, WriterFactory } from '../lib/index.js'
import { bytes, eventually } from './kit/index.js'
import { fakeClock } from './kit/clock.js'
import { TUS, patchHeaders, setupResumable, type Setup } from './kit/resumable.js'

/** What the progress callback heard: the entry's status and progress, and which request (its x-step header) carried it. */
function listener (): { heard: string[], progress: (name: string, entry: UploadEntry, request: FastifyRequest | undefined) => void } {
  const heard: string[] = []
  return {
    heard,
    progress: (_name, entry, request) => {
      heard.push(`${entry.status} ${entry.progress} ${request === undefined ? 'no request' : String(request.headers['x-step'])}`)
    }
  }
}

/** The recorder's writers, noting which request each factory call came with. */
function noting (s: () => Setup, steps: string[]): WriterFactory {
  return (name, entry, request) => {
    steps.push(String(request.headers['x-step']))
    return s().recorder.factory(name, entry, request)
  }
}

t.test('progress hears the request carrying the bytes: each PATCH its own, a creation with a body itself', async (t) => {
  const { heard, progress } = listener()
  const factorySteps: string[] = []
  const made: { setup?: Setup } = {}
  const s = made.setup = await setupResumable(t, { progress, writer: noting(() => made.setup!, factorySteps) })
  const path = await s.create({ ...TUS, 'upload-length': 2000, 'x-step': 'create' })
  t.equal((await s.tus('PATCH', path, patchHeaders(0, { 'x-step': 'first' }), bytes(1000))).status, 204)
  t.ok(await eventually(() => heard.length === 1))
  t.equal((await s.tus('PATCH', path, patchHeaders(1000, { 'x-step': 'second' }), bytes(1000, 2))).status, 204)
  t.ok(await eventually(() => heard.length === 3))
  await s.create({ ...TUS, 'upload-length': 500, 'content-type': 'application/offset+octet-stream', 'x-step': 'create with body' }, bytes(500))
  t.ok(await eventually(() => heard.length === 5))
  t.same(heard, ['uploading 50 first', 'uploading 99 second', 'done 100 second', 'uploading 99 create with body', 'done 100 create with body'])
  t.same(factorySteps, ['create', 'create with body'], 'each writer factory ran during its creation')
  await s.finish(t)
})

t.test('progress hears no request when the upload ends outside one: terminated, or expired', async (t) => {
  const { heard, progress } = listener()
  const s = await setupResumable(t, { progress }, { plugin: { resumableExpiry: 300 } })
  const clock = fakeClock(t)
  const deleted = await s.create({ ...TUS, 'upload-length': 2000, 'x-step': 'create' })
  t.equal((await s.tus('PATCH', deleted, patchHeaders(0, { 'x-step': 'patch' }), bytes(1000))).status, 204)
  t.equal((await s.tus('DELETE', deleted, { ...TUS, 'x-step': 'delete' })).status, 204)
  t.ok(await eventually(() => heard.length === 2))
  const expired = await s.create({ ...TUS, 'upload-length': 2000, 'x-step': 'create' })
  t.equal((await s.tus('PATCH', expired, patchHeaders(0, { 'x-step': 'patch' }), bytes(1000))).status, 204)
  t.ok(await eventually(() => heard.length === 3))
  await clock.tickAsync(300)
  t.ok(await eventually(() => heard.length === 4))
  clock.restore()
  t.same(heard, ['uploading 50 patch', 'cancelled 50 no request', 'uploading 50 patch', 'cancelled 50 no request'])
  await s.finish(t)
})
