// The resumable endpoint's header parsing on its own: pure functions from headers to a
// typed value or a coded error, with no request, reply or upload involved.
import t from 'tap'
import { dialectOf, parseAppend, parseCreation, type Dialect } from '../lib/transports/resumable/headers.js'
import { newLength, roomOf } from '../lib/transports/resumable/append.js'
import { resolveAllowUpload } from '../lib/config.js'
import { MemoryWriter } from '../lib/index.js'

const TUS: Dialect = { ietf: false }
const DRAFT: Dialect = { ietf: true, version: '6' }

t.test('dialectOf: tus 1.0, a known interop version, or nothing', async (t) => {
  t.same(dialectOf({ 'tus-resumable': '1.0.0' }), { ietf: false })
  t.same(dialectOf({ 'upload-draft-interop-version': ' 7 ' }), { ietf: true, version: '7' })
  t.same(dialectOf({ 'upload-draft-interop-version': '7', 'tus-resumable': '1.0.0' }), { ietf: true, version: '7' }, 'the draft wins')
  t.equal(dialectOf({ 'upload-draft-interop-version': '4', 'tus-resumable': '1.0.0' }), undefined, 'an unknown version is not tus')
  t.equal(dialectOf({ 'tus-resumable': '0.2.2' }), undefined)
  t.equal(dialectOf({}), undefined)
})

t.test('parseCreation: length, deferral, completeness and metadata in one value', async (t) => {
  const metadata = `filename ${Buffer.from('../a.txt').toString('base64')},filetype ${Buffer.from('Text/Plain; x=1').toString('base64')}`
  t.same(parseCreation({ 'upload-length': '10', 'upload-metadata': metadata }, TUS, false), {
    concat: undefined,
    length: 10,
    deferred: false,
    complete: undefined,
    metadata: { raw: metadata, values: new Map([['filename', '../a.txt'], ['filetype', 'Text/Plain; x=1']]) },
    clientName: 'a.txt',
    clientType: 'text/plain'
  })
  t.match(parseCreation({ 'upload-defer-length': '1' }, TUS, false), { length: undefined, deferred: true })
  t.match(parseCreation({ 'upload-complete': '?1', 'content-length': '5' }, DRAFT, true), { length: 5, complete: true }, 'a complete draft creation is as long as its body')
  t.match(parseCreation({ 'upload-complete': '?1' }, DRAFT, false), { length: 0, complete: true })
  t.match(parseCreation({ 'upload-complete': '?0' }, DRAFT, false), { length: undefined, complete: false, deferred: false })
  t.match(parseCreation({ 'upload-concat': 'final;/a /b', 'upload-length': 'junk' }, TUS, false), { concat: { kind: 'final', parts: ['/a', '/b'] }, length: undefined }, "a final's length headers are not read")
  t.match(parseCreation({ 'upload-concat': 'partial', 'upload-length': '3' }, TUS, false), { concat: { kind: 'partial' }, length: 3 })
  t.throws(() => parseCreation({}, TUS, false), { code: 'FST_CHUNKED_UPLOAD_LENGTH' })
  t.throws(() => parseCreation({ 'upload-defer-length': '2' }, TUS, false), { code: 'FST_CHUNKED_UPLOAD_LENGTH' })
  t.throws(() => parseCreation({ 'upload-defer-length': '1', 'upload-length': '3' }, TUS, false), { code: 'FST_CHUNKED_UPLOAD_LENGTH' })
  t.throws(() => parseCreation({ 'upload-length': '-1' }, TUS, false), { code: 'FST_CHUNKED_UPLOAD_BAD_HEADER' })
  t.throws(() => parseCreation({ 'upload-length': '1', 'upload-metadata': 'a b c' }, TUS, false), { code: 'FST_CHUNKED_UPLOAD_BAD_HEADER' })
})

t.test('parseAppend: offset, lengths, completeness and checksum in one value', async (t) => {
  const checksum = `sha256 ${Buffer.alloc(32).toString('base64')}`
  t.same(parseAppend({ 'content-type': 'application/offset+octet-stream', 'upload-offset': '7', 'content-length': '3', 'upload-checksum': checksum }, TUS, false, true), {
    offset: 7, contentLength: 3, length: undefined, complete: undefined, checksum: { algorithm: 'sha256', digest: Buffer.alloc(32).toString('base64') }
  })
  t.match(parseAppend({ 'content-type': 'application/partial-upload', 'upload-offset': '0', 'upload-complete': '?1' }, DRAFT, false, true), { offset: 0, complete: true })
  t.match(parseAppend({ 'upload-offset': '0' }, { ietf: true, version: '5' }, false, true), { offset: 0 }, 'interop version 5 sent no content type')
  t.match(parseAppend({}, TUS, true, false), { offset: 0 }, 'a creation without a body needs no content type, and starts at 0')
  t.throws(() => parseAppend({ 'upload-offset': '0' }, TUS, false, false), { code: 'FST_CHUNKED_UPLOAD_BAD_CONTENT_TYPE' })
  t.throws(() => parseAppend({ 'content-type': 'application/offset+octet-stream' }, TUS, false, true), { code: 'FST_CHUNKED_UPLOAD_LENGTH' })
  t.throws(() => parseAppend({ 'content-type': 'application/offset+octet-stream', 'upload-offset': '0', 'upload-checksum': 'crc32 AAAA' }, TUS, false, true), { code: 'FST_CHUNKED_UPLOAD_BAD_HEADER' })
})

t.test('newLength and roomOf: what an append may declare and bring, from the upload state alone', async (t) => {
  const config = resolveAllowUpload({ f: { accept: 'any', maxFileSize: 100 } }, {}, () => MemoryWriter, 'TEST /').get('f')!
  t.equal(newLength({ length: undefined, offset: 5, config }, undefined), undefined, 'nothing declared')
  t.equal(newLength({ length: 10, offset: 5, config }, 10), undefined, 'the same length again')
  t.equal(newLength({ length: undefined, offset: 5, config }, 20), 20, 'a deferred length becomes known')
  t.throws(() => newLength({ length: 10, offset: 5, config }, 11), { code: 'FST_CHUNKED_UPLOAD_LENGTH' })
  t.throws(() => newLength({ length: undefined, offset: 5, config }, 4), { code: 'FST_CHUNKED_UPLOAD_LENGTH' })
  t.equal(roomOf({ length: 10, offset: 4, config }), 6)
  t.equal(roomOf({ length: undefined, offset: 4, config }), 96, 'maxFileSize bounds a deferred length')
})
