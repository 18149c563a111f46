// Coverage counts the package's own sources (lib/ and client/) only, whichever test
// loads them: the demo and bench scripts that some tests start run the built copy in dist/.
import { readdirSync } from 'node:fs'

const sourceFiles = ['lib', 'client'].flatMap((dir) => readdirSync(dir, { recursive: true })
  .filter((file) => file.endsWith('.ts'))
  .map((file) => `${dir}/${file}`))

export default function coverageMap () {
  return sourceFiles
}
