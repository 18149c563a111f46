// The behaviour every store shares, asserted through the Store interface only: run it
// with a factory for each store (test/stores.test.ts). A new store (Redis) passes it
// unchanged. Time-bound behaviour (lock take-over) runs under a fake clock.
import fc from 'fast-check'
import type { Test } from 'tap'
import type { HeldLock, ParkedEntry, Store, UploadRecord } from '../../lib/stores/store.js'
import { fakeClock } from './clock.js'
import { propertyRun } from './property.js'

/** Opens a fresh, empty store for one test; the suite closes it at the test's end. */
export type StoreFactory = (t: Test) => Promise<Store>

const LOCK_TIMEOUT = 5_000

export function upload (id: string, overrides: Partial<UploadRecord> = {}): UploadRecord {
  return {
    id,
    configKey: 'POST /up file',
    owner: 'alice',
    length: 1000,
    offset: 0,
    metadata: 'filename YS5iaW4=',
    concat: undefined,
    snapshot: { path: `/tmp/${id}`, parts: [{ n: 1, etag: 'e1' }] },
    createdAt: 1_000,
    expiresAt: 61_000,
    ...overrides
  }
}

export function parked (ref: string, overrides: Partial<ParkedEntry> = {}): ParkedEntry {
  return {
    ref,
    owner: 'alice',
    configKey: 'POST /up file',
    meta: { bytes: 1000, sha256: 'abc' },
    snapshot: { path: `/tmp/${ref}`, offset: 1000 },
    expiresAt: 61_000,
    clientName: 'a.bin',
    clientType: 'application/octet-stream',
    clientSize: 1000,
    clientLastModified: 1_700_000_000_000,
    ...overrides
  }
}

/** A lock request whose progress the test reads: whether it was granted, and how often its holder was asked to stop. */
function request (store: Store, id: string, timeout = LOCK_TIMEOUT): { asked: () => number, granted: () => HeldLock | undefined, lock: Promise<HeldLock> } {
  let asked = 0
  let held: HeldLock | undefined
  const lock = store.lock(id, () => { asked++ }, timeout).then((lock) => (held = lock))
  return { asked: () => asked, granted: () => held, lock }
}

export function storeContract (t: Test, name: string, factory: StoreFactory): void {
  const open = async (t: Test): Promise<Store> => {
    const store = await factory(t)
    t.teardown(() => store.close())
    return store
  }

  t.test(`${name}: upload records`, async (t) => {
    t.test('a created record reads back as it was, and a missing one is undefined', async (t) => {
      const store = await open(t)
      const record = upload('u1')
      await store.createUpload(record)
      t.same(await store.getUpload('u1'), record)
      t.equal(await store.getUpload('nope'), undefined)
      const bare = upload('u2', { owner: undefined, length: undefined, metadata: undefined, concat: 'partial', snapshot: null })
      await store.createUpload(bare)
      const back = await store.getUpload('u2')
      t.same(back, bare, 'undefined fields stay undefined, a null snapshot stays null')
      t.equal(back?.owner, undefined)
    })

    t.test('uploads() lists every record, as copies; deleted ones no more', async (t) => {
      const store = await open(t)
      t.same(await store.uploads(), [], 'none yet')
      await store.createUpload(upload('u1'))
      await store.createUpload(upload('u2', { offset: 5 }))
      await store.park(parked('p1'))
      const listed = await store.uploads()
      t.same(listed.sort((a, b) => a.id.localeCompare(b.id)), [upload('u1'), upload('u2', { offset: 5 })], 'records only, not parked entries')
      listed[0]!.offset = 42
      t.equal((await store.getUpload('u1'))?.offset, upload('u1').offset, 'a copy')
      await store.deleteUpload('u1')
      t.same((await store.uploads()).map((u) => u.id), ['u2'])
    })

    t.test('the store keeps values, not objects: changing what went in or came out changes nothing stored', async (t) => {
      const store = await open(t)
      const record = upload('u1')
      await store.createUpload(record)
      record.offset = 99;
      (record.snapshot as { path: string }).path = 'changed'
      const read = (await store.getUpload('u1'))!
      t.same(read, upload('u1'))
      read.offset = 77
      t.same(await store.getUpload('u1'), upload('u1'))
    })

    t.test('ids are any string: ones that differ only by case or punctuation are different records', async (t) => {
      const store = await open(t)
      const ids = ['a', 'A', 'a/b', 'a.b', '../x', 'ü 1', 'a'.repeat(100)]
      for (const id of ids) await store.createUpload(upload(id, { offset: id.length }))
      for (const id of ids) t.equal((await store.getUpload(id))?.offset, id.length, JSON.stringify(id))
    })

    t.test('creating an id that exists fails and keeps the first record', async (t) => {
      const store = await open(t)
      await store.createUpload(upload('u1'))
      await t.rejects(store.createUpload(upload('u1', { owner: 'mallory' })), { code: 'FST_CHUNKED_UPLOAD_STORE_EXISTS', statusCode: 409 })
      t.equal((await store.getUpload('u1'))?.owner, 'alice')
      const both = await Promise.allSettled([store.createUpload(upload('u2')), store.createUpload(upload('u2'))])
      t.same(both.map((r) => r.status).sort(), ['fulfilled', 'rejected'], 'of two concurrent creations, one succeeds')
    })

    t.test('the lock holder updates from the offset it read; the record is changed and returned', async (t) => {
      const store = await open(t)
      await store.createUpload(upload('u1', { length: undefined }))
      const lock = await store.lock('u1', () => {}, LOCK_TIMEOUT)
      const updated = await store.updateUpload('u1', { offset: 0, token: lock.token }, { offset: 400, length: 1000, snapshot: { parts: 2 }, expiresAt: 90_000 })
      const expected = upload('u1', { offset: 400, length: 1000, snapshot: { parts: 2 }, expiresAt: 90_000 })
      t.same(updated, expected)
      t.same(await store.getUpload('u1'), expected)
      t.same(await store.updateUpload('u1', { offset: 400, token: lock.token }, { offset: 1000 }), { ...expected, offset: 1000 }, 'and again from the new offset')
      await lock.release()
    })

    t.test('an update from a stale offset fails and changes nothing', async (t) => {
      const store = await open(t)
      await store.createUpload(upload('u1', { offset: 500 }))
      const lock = await store.lock('u1', () => {}, LOCK_TIMEOUT)
      await t.rejects(store.updateUpload('u1', { offset: 400, token: lock.token }, { offset: 900 }), { code: 'FST_CHUNKED_UPLOAD_STALE_UPDATE', statusCode: 409, message: /offset is 500, not 400/ })
      t.equal((await store.getUpload('u1'))?.offset, 500)
      await lock.release()
    })

    t.test('only the current lock holder updates: not after its release, not with a made-up token', async (t) => {
      const store = await open(t)
      await store.createUpload(upload('u1'))
      await t.rejects(store.updateUpload('u1', { offset: 0, token: 12345 }, { offset: 10 }), { code: 'FST_CHUNKED_UPLOAD_STALE_UPDATE', message: /lock 12345 is no longer held/ })
      const lock = await store.lock('u1', () => {}, LOCK_TIMEOUT)
      await lock.release()
      await t.rejects(store.updateUpload('u1', { offset: 0, token: lock.token }, { offset: 10 }), { code: 'FST_CHUNKED_UPLOAD_STALE_UPDATE' })
      const other = await store.lock('other', () => {}, LOCK_TIMEOUT)
      await t.rejects(store.updateUpload('u1', { offset: 0, token: other.token }, { offset: 10 }), { code: 'FST_CHUNKED_UPLOAD_STALE_UPDATE' }, 'a lock on another id is no lock on this one')
      await other.release()
      t.equal((await store.getUpload('u1'))?.offset, 0)
    })

    t.test('an update of a record that is gone fails as not found', async (t) => {
      const store = await open(t)
      const lock = await store.lock('u1', () => {}, LOCK_TIMEOUT)
      await t.rejects(store.updateUpload('u1', { offset: 0, token: lock.token }, { offset: 10 }), { code: 'FST_CHUNKED_UPLOAD_NOT_FOUND', statusCode: 404 })
      await lock.release()
    })

    t.test('a delete removes the record, and says so to one caller only', async (t) => {
      const store = await open(t)
      await store.createUpload(upload('u1'))
      t.equal(await store.deleteUpload('u1'), true)
      t.equal(await store.getUpload('u1'), undefined)
      t.equal(await store.deleteUpload('u1'), false)
      await store.createUpload(upload('u2'))
      const results = await Promise.all([store.deleteUpload('u2'), store.deleteUpload('u2'), store.deleteUpload('u2')])
      t.same(results.filter(Boolean).length, 1, 'of three concurrent deletes, one removed it')
      await store.createUpload(upload('u1'))
      t.equal((await store.getUpload('u1'))?.id, 'u1', 'a deleted id can be created again')
    })
  })

  t.test(`${name}: locks`, async (t) => {
    t.test('a free lock is granted at once, with tokens that grow, per id', async (t) => {
      const store = await open(t)
      const a = await store.lock('u1', () => {}, LOCK_TIMEOUT)
      const b = await store.lock('u2', () => {}, LOCK_TIMEOUT)
      t.ok(b.token > a.token, 'a lock on another id is not blocked')
      await a.release()
      const c = await store.lock('u1', () => {}, LOCK_TIMEOUT)
      t.ok(c.token > a.token, 'the next holder of u1 has a greater token')
      await Promise.all([b.release(), c.release()])
    })

    t.test('a newer lock asks the holder to stop and is granted once the holder released', async (t) => {
      const clock = fakeClock(t)
      const store = await open(t)
      const first = request(store, 'u1')
      const held = await first.lock
      const second = request(store, 'u1')
      await clock.tickAsync(LOCK_TIMEOUT - 1)
      t.equal(first.asked(), 1, 'the holder was asked to stop, once')
      t.equal(second.granted(), undefined, 'the newer request waits while the holder has not released')
      await held.release()
      await held.release()
      const next = await second.lock
      t.ok(next.token > held.token)
      t.equal(second.asked(), 0, 'nobody waits: the new holder is not asked to stop')
      await next.release()
    })

    t.test('a holder that does not release within the timeout is presumed dead: the waiter takes over, the old holder can neither update nor release it', async (t) => {
      const clock = fakeClock(t)
      const store = await open(t)
      await store.createUpload(upload('u1'))
      const dead = await store.lock('u1', () => {}, LOCK_TIMEOUT)
      const waiter = request(store, 'u1', 2_000)
      await clock.tickAsync(1_999)
      t.equal(waiter.granted(), undefined, 'not before its timeout')
      await clock.tickAsync(1)
      const taken = await waiter.lock
      t.ok(taken.token > dead.token)
      await t.rejects(store.updateUpload('u1', { offset: 0, token: dead.token }, { offset: 10 }), { code: 'FST_CHUNKED_UPLOAD_STALE_UPDATE' }, 'the old holder cannot move the offset, even from the right one')
      await dead.release()
      const third = request(store, 'u1')
      await clock.tickAsync(0)
      t.equal(third.granted(), undefined, 'the old holder\'s release did not free the new holder\'s lock')
      t.equal(waiter.asked(), 1, 'the new holder was asked to stop by the third request')
      t.same(await store.updateUpload('u1', { offset: 0, token: taken.token }, { offset: 10 }), upload('u1', { offset: 10 }), 'the new holder updates')
      await taken.release()
      await (await third.lock).release()
    })

    t.test('a holder whose onStopRequested throws is left to the timeout; the waiter is not hurt by it', async (t) => {
      const clock = fakeClock(t)
      const store = await open(t)
      const broken = await store.lock('u1', () => { throw new Error('the holder\'s stop failed') }, LOCK_TIMEOUT)
      const waiter = request(store, 'u1', 1_000)
      await clock.tickAsync(999)
      t.equal(waiter.granted(), undefined)
      await clock.tickAsync(1)
      t.ok((await waiter.lock).token > broken.token)
      await (await waiter.lock).release()
    })

    t.test('waiters are served in order: each asks the holder before it to stop, once', async (t) => {
      const clock = fakeClock(t)
      const store = await open(t)
      const a = request(store, 'u1')
      const heldA = await a.lock
      const b = request(store, 'u1')
      const c = request(store, 'u1')
      await clock.tickAsync(0)
      t.equal(a.asked(), 1, 'the holder was asked once, though two wait')
      await heldA.release()
      const heldB = await b.lock
      await clock.tickAsync(0)
      t.equal(c.granted(), undefined, 'the third waits for the second')
      t.equal(b.asked(), 1, 'the second, granted while the third waits, is asked to stop at once')
      await heldB.release()
      const heldC = await c.lock
      t.ok(heldA.token < heldB.token && heldB.token < heldC.token, 'tokens grow in grant order')
      t.equal(c.asked(), 0)
      await heldC.release()
      const again = await store.lock('u1', () => {}, LOCK_TIMEOUT)
      t.ok(again.token > heldC.token, 'free again once the last one released')
      await again.release()
    })

    t.test('each holder in line gets the full timeout to release, counted from when it was asked', async (t) => {
      const clock = fakeClock(t)
      const store = await open(t)
      const a = await store.lock('u1', () => {}, LOCK_TIMEOUT)
      const b = request(store, 'u1', 1_000)
      const c = request(store, 'u1', 3_000)
      await clock.tickAsync(1_000)
      const heldB = await b.lock
      t.ok(heldB.token > a.token, 'the second took over the dead first')
      await clock.tickAsync(2_999)
      t.equal(c.granted(), undefined, 'the third gives the second its whole 3 s')
      await clock.tickAsync(1)
      t.ok((await c.lock).token > heldB.token, 'then takes over')
      await (await c.lock).release()
    })
  })

  t.test(`${name}: parked entries`, async (t) => {
    t.test('a parked entry goes to its owner, for its config, once', async (t) => {
      const store = await open(t)
      const entry = parked('r1')
      await store.park(entry)
      t.equal(await store.claim('r1', 'mallory', entry.configKey), undefined, 'not to another owner')
      t.equal(await store.claim('r1', undefined, entry.configKey), undefined, 'not to a request without an owner')
      t.equal(await store.claim('r1', 'alice', 'POST /other file'), undefined, 'not for another config')
      t.equal(await store.claim('nope', 'alice', entry.configKey), undefined, 'an unknown ref is nothing')
      t.same(await store.claim('r1', 'alice', entry.configKey), entry, 'to its owner, as parked')
      t.equal(await store.claim('r1', 'alice', entry.configKey), undefined, 'a second claim gets nothing')
    })

    t.test('a parked entry reads back as it was: what its client said of the file included; undefined fields stay undefined', async (t) => {
      const store = await open(t)
      const bare = parked('r1', { owner: undefined, clientSize: undefined, clientLastModified: undefined, meta: null, clientName: '', clientType: '' })
      await store.park(bare)
      const back = await store.claim('r1', undefined, bare.configKey)
      t.same(back, bare)
      t.equal(back?.clientSize, undefined)
      t.equal(back?.clientLastModified, undefined)
      const negative = parked('r2', { clientLastModified: -1.5 })
      await store.park(negative)
      t.same(await store.claim('r2', 'alice', negative.configKey), negative, 'a last-modified time is any number a client sent')
    })

    t.test('parked() lists every parked entry, as copies; claimed, forgotten and swept ones no more', async (t) => {
      const store = await open(t)
      t.same(await store.parked(), [], 'none yet')
      await store.park(parked('p1'))
      await store.park(parked('p2', { expiresAt: 100 }))
      await store.park(parked('p3'))
      await store.createUpload(upload('u1'))
      const listed = await store.parked()
      t.same(listed.sort((a, b) => a.ref.localeCompare(b.ref)), [parked('p1'), parked('p2', { expiresAt: 100 }), parked('p3')], 'parked entries only, not records')
      listed[0]!.expiresAt = 1;
      (listed[0]!.snapshot as { path: string }).path = 'changed'
      t.same((await store.parked()).find((p) => p.ref === 'p1'), parked('p1'), 'a copy')
      await store.claim('p1', 'alice', 'POST /up file')
      await store.forget('p3')
      await store.sweep(100)
      t.same(await store.parked(), [])
    })

    t.test('an entry parked without an owner goes only to a request without one', async (t) => {
      const store = await open(t)
      const entry = parked('r1', { owner: undefined })
      await store.park(entry)
      t.equal(await store.claim('r1', 'alice', entry.configKey), undefined)
      t.same(await store.claim('r1', undefined, entry.configKey), entry)
    })

    t.test('of concurrent claims, exactly one gets the entry', async (t) => {
      const store = await open(t)
      await store.park(parked('r1'))
      const claims = await Promise.all(Array.from({ length: 5 }, async () => await store.claim('r1', 'alice', 'POST /up file')))
      t.equal(claims.filter((c) => c !== undefined).length, 1)
    })

    t.test('parking a ref again replaces it', async (t) => {
      const store = await open(t)
      await store.park(parked('r1'))
      const again = parked('r1', { meta: { bytes: 2 }, expiresAt: 99_000 })
      await store.park(again)
      t.same(await store.claim('r1', 'alice', 'POST /up file'), again)
    })

    t.test('a forgotten entry is no longer claimable; forget says so to one caller only', async (t) => {
      const store = await open(t)
      await store.park(parked('r1'))
      t.equal(await store.forget('r1'), true)
      t.equal(await store.forget('r1'), false)
      t.equal(await store.claim('r1', 'alice', 'POST /up file'), undefined)
      const meta = parked('r2').meta as { bytes: number }
      await store.park(parked('r2'))
      meta.bytes = 5
      t.same((await store.claim('r2', 'alice', 'POST /up file'))?.meta, parked('r2').meta, 'and what was parked is a value')
    })
  })

  t.test(`${name}: expiry`, async (t) => {
    t.test('a sweep removes and returns what expired by now (expiresAt <= now), and nothing else', async (t) => {
      const store = await open(t)
      await store.createUpload(upload('old', { expiresAt: 100 }))
      await store.createUpload(upload('edge', { expiresAt: 200 }))
      await store.createUpload(upload('new', { expiresAt: 201 }))
      await store.park(parked('p-old', { expiresAt: 150 }))
      await store.park(parked('p-new', { expiresAt: 300 }))
      t.same(await store.sweep(99), { uploads: [], parked: [] }, 'nothing before its time')
      const swept = await store.sweep(200)
      t.same(swept.uploads.map((u) => u.id).sort(), ['edge', 'old'])
      t.same(swept.uploads.find((u) => u.id === 'old'), upload('old', { expiresAt: 100 }), 'whole records, for the caller to clean up after')
      t.same(swept.parked, [parked('p-old', { expiresAt: 150 })])
      t.equal(await store.getUpload('old'), undefined, 'swept records are gone')
      t.equal(await store.claim('p-old', 'alice', 'POST /up file'), undefined, 'swept entries are gone')
      t.same(await store.sweep(200), { uploads: [], parked: [] }, 'a second sweep gets nothing')
      t.equal((await store.getUpload('new'))?.id, 'new')
      t.ok(await store.forget('p-new'))
    })

    t.test('concurrent sweeps hand each expired item to one of them', async (t) => {
      const store = await open(t)
      for (let i = 0; i < 10; i++) {
        await store.createUpload(upload(`u${i}`, { expiresAt: 100 }))
        await store.park(parked(`p${i}`, { expiresAt: 100 }))
      }
      const sweeps = await Promise.all([store.sweep(100), store.sweep(100), store.sweep(100)])
      const uploads = sweeps.flatMap((s) => s.uploads.map((u) => u.id)).sort()
      const entries = sweeps.flatMap((s) => s.parked.map((p) => p.ref)).sort()
      t.same(uploads, Array.from({ length: 10 }, (_, i) => `u${i}`).sort(), 'every upload, once')
      t.same(entries, Array.from({ length: 10 }, (_, i) => `p${i}`).sort(), 'every entry, once')
    })

    t.test('an upload whose lock is held or awaited is being written: a sweep leaves it until the lock is free', async (t) => {
      const store = await open(t)
      await store.createUpload(upload('u1', { expiresAt: 100 }))
      const lock = await store.lock('u1', () => {}, LOCK_TIMEOUT)
      t.same((await store.sweep(1_000)).uploads, [], 'held')
      const waiter = store.lock('u1', () => {}, LOCK_TIMEOUT)
      await lock.release()
      const next = await waiter
      t.same((await store.sweep(1_000)).uploads, [], 'held by the next')
      await next.release()
      t.same((await store.sweep(1_000)).uploads.map((u) => u.id), ['u1'], 'swept once free')
    })
  })

  t.test(`${name}: under any mix of concurrent claims, forgets, deletes and sweeps, each item reaches exactly one caller`, async (t) => {
    const KEYS = 4
    const op = fc.record({
      kind: fc.constantFrom('claim', 'forget', 'delete', 'sweep'),
      key: fc.integer({ min: 0, max: KEYS - 1 }),
      owner: fc.constantFrom('alice', 'bob'),
      now: fc.integer({ min: 0, max: 5 })
    })
    const expiries = fc.array(fc.integer({ min: 0, max: 5 }), { minLength: KEYS, maxLength: KEYS })
    await fc.assert(fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 20 }), expiries, async (ops, expiresAt) => {
      const store = await open(t)
      const items: string[] = []
      for (let key = 0; key < KEYS; key++) {
        await store.createUpload(upload(`u${key}`, { expiresAt: expiresAt[key]! }))
        await store.park(parked(`p${key}`, { expiresAt: expiresAt[key]! }))
        items.push(`u${key}`, `p${key}`)
      }
      // What each operation was handed, all run at once.
      const handed = await Promise.all(ops.map(async ({ kind, key, owner, now }): Promise<string[]> => {
        if (kind === 'claim') {
          const entry = await store.claim(`p${key}`, owner, 'POST /up file')
          if (entry !== undefined && owner !== 'alice') throw new Error(`${owner} claimed alice's entry`)
          return entry === undefined ? [] : [entry.ref]
        }
        if (kind === 'forget') return await store.forget(`p${key}`) ? [`p${key}`] : []
        if (kind === 'delete') return await store.deleteUpload(`u${key}`) ? [`u${key}`] : []
        const swept = await store.sweep(now)
        for (const item of [...swept.uploads, ...swept.parked]) if (item.expiresAt > now) throw new Error(`swept before its time at ${now}: ${JSON.stringify(item)}`)
        return [...swept.uploads.map((u) => u.id), ...swept.parked.map((p) => p.ref)]
      }))
      const rest = await store.sweep(Number.MAX_SAFE_INTEGER)
      const all = [...handed.flat(), ...rest.uploads.map((u) => u.id), ...rest.parked.map((p) => p.ref)].sort()
      if (JSON.stringify(all) !== JSON.stringify(items.sort())) throw new Error(`handed out ${JSON.stringify(all)}, expected each of ${JSON.stringify(items)} once`)
    }), propertyRun(t, 25))
    t.pass('each item reached exactly one caller')
  })
}
