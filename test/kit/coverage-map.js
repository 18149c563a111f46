// Coverage counts the plugin's own sources (lib/) only, whichever test loads them:
// the demo and bench scripts that some tests start run the built copy in dist/.
import { readdirSync } from 'node:fs'

const libFiles = readdirSync('lib', { recursive: true })
  .filter((file) => file.endsWith('.ts'))
  .map((file) => `lib/${file}`)

export default function coverageMap () {
  return libFiles
}
