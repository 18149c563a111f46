// The browser tests' harness: the demo run as a user runs it (a child process loading
// dist/: build first), Debian's Chromium driven by playwright-core against it, and the
// page helpers both browser tests use. If the browser cannot start, the test fails; it
// never skips.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium, type Page } from 'playwright-core'
import type { Test } from 'tap'
import { startDemo, type LogLine } from './client-kit.js'

const CHROMIUM = '/usr/bin/chromium'
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
  '--no-first-run', '--disable-component-update', '--disable-sync'
]
/** Bound on every browser step. */
export const STEP_MS = 20_000

export interface TestFile { name: string, mimeType: string, buffer: Buffer }

export interface DemoPage {
  page: Page
  url: string
  logs: () => LogLine[]
  /** Uncaught errors of the page. */
  pageErrors: string[]
  /** Console errors of the page. */
  consoleErrors: string[]
  /** Records every value each progress bar of a list takes, by file name, in the page. */
  watchBars: (list: string) => Promise<void>
  bars: () => Promise<Record<string, number[]>>
  barValue: (selector: string) => Promise<number>
  /** Drops files on a form's drop zone, as a drag from the desktop would. */
  dropFiles: (form: string, files: TestFile[], lastModified?: number) => Promise<void>
  /** The rows of a section's results table: cell texts. */
  tableRows: (section: string) => Promise<string[][]>
  waitForStatus: (section: string, pattern: RegExp) => Promise<string>
}

/** Starts the demo and a fresh headless Chromium on its page; both end at teardown. */
export async function openDemo (t: Test, name: string): Promise<DemoPage> {
  const demoTmp = await mkdtemp(join(tmpdir(), `fcu-${name}-demo-`))
  const userDataDir = await mkdtemp(join(tmpdir(), `fcu-${name}-chromium-`))
  t.teardown(async () => {
    await rm(demoTmp, { recursive: true, force: true })
    await rm(userDataDir, { recursive: true, force: true })
  })
  const { url, logs } = await startDemo(t, demoTmp)
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM, headless: true, args: ARGS, timeout: 30_000
  })
  t.teardown(() => context.close())
  context.setDefaultTimeout(STEP_MS)
  const page = context.pages()[0] ?? await context.newPage()
  const pageErrors: string[] = []
  const consoleErrors: string[] = []
  page.on('pageerror', (error) => pageErrors.push(error.message))
  page.on('console', (message) => { if (message.type() === 'error') consoleErrors.push(message.text()) })
  await page.goto(url)

  // The functions given to page.evaluate run in the page; this project's TypeScript has
  // no DOM types (the client must typecheck without them), so they reach the page's
  // globals through `globalThis as any`.
  return {
    page,
    url,
    logs,
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
    async dropFiles (form, files, lastModified) {
      const payload = files.map((file) => ({ name: file.name, type: file.mimeType, base64: file.buffer.toString('base64') }))
      await page.evaluate(async ({ form, payload, lastModified }) => {
        const { document, DataTransfer, DragEvent, File, fetch } = globalThis as any
        const transfer = new DataTransfer()
        for (const file of payload) {
          const bytes = await (await fetch(`data:application/octet-stream;base64,${file.base64}`)).arrayBuffer()
          transfer.items.add(new File([bytes], file.name, { type: file.type, ...(lastModified === undefined ? {} : { lastModified }) }))
        }
        const zone = document.querySelector(`${form} .drop`)
        for (const type of ['dragenter', 'dragover', 'drop']) {
          zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }))
        }
      }, { form, payload, lastModified })
    },
    tableRows: async (section) => await page.$$eval(`${section} table tbody tr`, (rows) => rows.map((row) => [...row.querySelectorAll('td')].map((td) => td.textContent!))),
    async waitForStatus (section, pattern) {
      const status = page.locator(`${section} .status`)
      await status.filter({ hasText: pattern }).waitFor({ timeout: STEP_MS })
      return (await status.textContent())!
    }
  }
}
