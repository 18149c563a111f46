// The browser tests' harness: the demo run as a user runs it (a child process loading
// dist/: build first), Debian's Chromium driven by playwright-core against it, and the
// page helpers both browser tests use. If the browser cannot start, the test fails; it
// never skips (the test set-up, test/kit/setup.ts, installs Chromium when it is missing).
//
// Files reach the page from disk, as a user's do: written to a temp directory, then
// chosen by path (Chromium reads them itself). Handing their bytes to the page through
// playwright instead (base64 over the DevTools protocol) took over 20 s for 8 MB on a
// loaded machine.
import { mkdir, mkdtemp, rm, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium, type Page } from 'playwright-core'
import type { Test } from 'tap'
import { startDemo, type LogLine } from './client-kit.js'
import { PATIENCE_MS } from './index.js'
import { CHROMIUM } from './system-packages.js'

const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
  '--no-first-run', '--disable-component-update', '--disable-sync'
]
/** Bound on every browser step: what must happen, never an ordering (generous: a loaded machine is slow). */
export const STEP_MS = PATIENCE_MS

export interface TestFile { name: string, mimeType: string, buffer: Buffer }

export interface DemoPage {
  page: Page
  url: string
  logs: () => LogLine[]
  /** Waits until `fn` returns something, re-checked on every line the demo logs. */
  until: <T>(what: string, fn: () => T | undefined | false) => Promise<T>
  /** Uncaught errors of the page. */
  pageErrors: string[]
  /** Console errors of the page. */
  consoleErrors: string[]
  /** Records every value each progress bar of a list takes, by file name, in the page. */
  watchBars: (list: string) => Promise<void>
  bars: () => Promise<Record<string, number[]>>
  barValue: (selector: string) => Promise<number>
  /** Chooses files in a file input, as the file picker would: from disk (their type is the browser's, by extension). */
  chooseFiles: (input: string, files: TestFile[]) => Promise<void>
  /** Drops files on a form's drop zone, as a drag from the desktop would (with the given types). */
  dropFiles: (form: string, files: TestFile[], lastModified?: number) => Promise<void>
  /** The rows of a section's results table: cell texts. */
  tableRows: (section: string) => Promise<string[][]>
  waitForStatus: (section: string, pattern: RegExp) => Promise<string>
}

/** Starts the demo and a fresh headless Chromium on its page; both end at teardown. */
export async function openDemo (t: Test, name: string): Promise<DemoPage> {
  const demoTmp = await mkdtemp(join(tmpdir(), `fcu-${name}-demo-`))
  const userDataDir = await mkdtemp(join(tmpdir(), `fcu-${name}-chromium-`))
  const filesDir = await mkdtemp(join(tmpdir(), `fcu-${name}-files-`))
  t.teardown(async () => {
    await rm(demoTmp, { recursive: true, force: true })
    await rm(userDataDir, { recursive: true, force: true })
    await rm(filesDir, { recursive: true, force: true })
  })
  const { url, logs, until } = await startDemo(t, demoTmp)
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM.binary, headless: true, args: ARGS, timeout: STEP_MS
  })
  t.teardown(() => context.close())
  context.setDefaultTimeout(STEP_MS)
  context.setDefaultNavigationTimeout(STEP_MS)
  const page = context.pages()[0] ?? await context.newPage()
  const pageErrors: string[] = []
  const consoleErrors: string[] = []
  page.on('pageerror', (error) => pageErrors.push(error.message))
  page.on('console', (message) => { if (message.type() === 'error') consoleErrors.push(message.text()) })
  await page.goto(url)

  let written = 0
  /** Writes the files to disk, each in a directory of its own (names may repeat): their paths. */
  async function onDisk (files: TestFile[], lastModified?: number): Promise<string[]> {
    return await Promise.all(files.map(async (file) => {
      const dir = join(filesDir, String(written++))
      await mkdir(dir)
      const path = join(dir, file.name)
      await writeFile(path, file.buffer)
      if (lastModified !== undefined) await utimes(path, lastModified / 1000, lastModified / 1000)
      return path
    }))
  }

  // The functions given to page.evaluate run in the page; this project's TypeScript has
  // no DOM types (the client must typecheck without them), so they reach the page's
  // globals through `globalThis as any`.
  return {
    page,
    url,
    logs,
    until,
    pageErrors,
    consoleErrors,
    async watchBars (list) {
      await page.evaluate((selector) => {
        const { document, MutationObserver } = globalThis as any
        const seen: Record<string, number[]> = {}
        ;(globalThis as any).bars = seen
        new MutationObserver((records: any[]) => {
          for (const record of records) {
            if (record.target.tagName !== 'PROGRESS') continue
            const name: string = record.target.closest('li').dataset.name
            ;(seen[name] ??= []).push(record.target.value)
          }
        }).observe(document.querySelector(selector), { subtree: true, attributes: true, attributeFilter: ['value'] })
      }, list)
    },
    bars: async () => await page.evaluate(() => (globalThis as any).bars),
    barValue: async (selector) => await page.locator(selector).evaluate((bar) => (bar as unknown as { value: number }).value),
    async chooseFiles (input, files) {
      await page.setInputFiles(input, await onDisk(files))
    },
    async dropFiles (form, files, lastModified) {
      // The files are read from disk by a file input of our own, outside the page's forms,
      // then dropped: a drop carries the same disk-backed File objects a picker gives.
      const paths = await onDisk(files, lastModified)
      await page.evaluate(() => {
        const { document } = globalThis as any
        const input = document.createElement('input')
        Object.assign(input, { type: 'file', multiple: true, id: 'test-drop-source', hidden: true })
        document.body.append(input)
      })
      await page.setInputFiles('#test-drop-source', paths)
      const types = files.map((file) => file.mimeType)
      await page.evaluate(({ form, types }) => {
        const { document, DataTransfer, DragEvent, File } = globalThis as any
        const input = document.querySelector('#test-drop-source')
        const transfer = new DataTransfer()
        // The same bytes (a File is a Blob: no copy), with the type the test gives.
        ;[...input.files].forEach((file: any, i: number) => transfer.items.add(new File([file], file.name, { type: types[i], lastModified: file.lastModified })))
        input.remove()
        const zone = document.querySelector(`${form} .drop`)
        for (const type of ['dragenter', 'dragover', 'drop']) {
          zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }))
        }
      }, { form, types })
    },
    tableRows: async (section) => await page.$$eval(`${section} table tbody tr`, (rows) => rows.map((row) => [...row.querySelectorAll('td')].map((td) => td.textContent!))),
    async waitForStatus (section, pattern) {
      const status = page.locator(`${section} .status`)
      await status.filter({ hasText: pattern }).waitFor({ timeout: STEP_MS })
      return (await status.textContent())!
    }
  }
}
