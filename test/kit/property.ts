// The seed and run count of every property test: printed, and settable from the
// environment, so that any failure can be replayed exactly.
//   FC_SEED=<n>  the seed (default: a random one, printed as a comment)
//   FC_RUNS=<n>  runs per property (default: the test's own)
import type { Test } from 'tap'

export interface PropertyRun { seed: number, numRuns: number }

/** fast-check's `seed` and `numRuns` for this run; prints both (and how to replay) on `t`. */
export function propertyRun (t: Test, defaultRuns: number): PropertyRun {
  const seed = fromEnv('FC_SEED') ?? Math.floor(Math.random() * 2 ** 31)
  const numRuns = fromEnv('FC_RUNS') ?? defaultRuns
  t.comment(`fast-check seed ${seed}, ${numRuns} runs; replay with FC_SEED=${seed}`)
  return { seed, numRuns }
}

function fromEnv (name: string): number | undefined {
  const text = process.env[name]
  if (text === undefined || text === '') return undefined
  const value = Number(text)
  if (!Number.isSafeInteger(value)) throw new Error(`${name} must be an integer, not ${JSON.stringify(text)}`)
  return value
}
