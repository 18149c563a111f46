// Sends each form's files with the client library, over the WebSocket channel or HTTP,
// or with Uppy to the route's resumable (tus) endpoint, with a progress bar and a cancel
// button per file, then shows what the handler consumed.
import { upload } from '/client.js'

/** The resumable mode (Uppy), loaded when first chosen. */
let resumable
function loadResumable () {
  resumable ??= import('/resumable.js').catch((error) => {
    resumable = undefined // try again next time
    throw error
  })
  return resumable
}

const TRANSPORTS = {
  websocket: 'the WebSocket channel',
  http: 'HTTP',
  resumable: 'the resumable endpoint (tus, with Uppy)'
}

const sizeFormat = new Intl.NumberFormat('en', { maximumFractionDigits: 1 })

function formatSize (bytes) {
  if (bytes < 1000) return `${bytes} B`
  if (bytes < 1_000_000) return `${sizeFormat.format(bytes / 1000)} kB`
  return `${sizeFormat.format(bytes / 1_000_000)} MB`
}

/** "1 file", "2 files". */
function count (n, noun) {
  return `${n} ${noun}${n === 1 ? '' : 's'}`
}

function element (tag, className, text) {
  const node = document.createElement(tag)
  if (className !== undefined) node.className = className
  if (text !== undefined) node.textContent = text
  return node
}

/** A table row; each cell is a string or `{ text, className }`. */
function row (className, cells) {
  const tr = element('tr', className)
  for (const cell of cells) {
    const { text, className } = typeof cell === 'object' ? cell : { text: cell }
    tr.append(element('td', className, text))
  }
  return tr
}

const ERROR_TEXT = {
  too_large: 'too large',
  too_many_files: 'too many files',
  not_accepted: 'type not accepted',
  cancelled: 'cancelled'
}

function errorText (code) {
  return `${code}: ${ERROR_TEXT[code] ?? 'refused'}`
}

/** The failures the client saw (refused at announce, cancelled, lost): rows like the handler's errors. */
function clientFailures (results) {
  return results.filter((result) => !result.ok).map((result) => ({ clientName: result.name, code: result.code }))
}

const views = {
  // /upload/files: { note, files: [{ name, type, size, sha256 }], errors: [{ clientName, code }] }
  'files-form' (response, results) {
    const rows = response.files.map((file) => row('ok', [
      file.name, file.type || '?', { text: formatSize(file.size), className: 'num' }, { text: file.sha256, className: 'hash' }
    ]))
    const errors = [...response.errors, ...clientFailures(results)]
    for (const error of errors) {
      rows.push(row('failed', [error.clientName ?? '(upload)', '', '', errorText(error.code)]))
    }
    const note = response.note === '' || response.note === undefined ? '' : ` Note: “${response.note}”.`
    return { rows, summary: `${response.files.length} stored, ${errors.length} not.${note}` }
  },
  // /upload/echo: { files: [{ name, type, total, chunks, sha256 }] }
  'echo-form' (response, results) {
    const rows = response.files.map((file) => row('ok', [
      file.name, file.type || '?', { text: file.total.toLocaleString('en'), className: 'num' }, { text: String(file.chunks), className: 'num' },
      { text: file.sha256, className: 'hash' }
    ]))
    for (const error of clientFailures(results)) {
      rows.push(row('failed', [error.clientName, '', '', '', errorText(error.code)]))
    }
    const total = response.files.reduce((sum, file) => sum + file.total, 0)
    return { rows, summary: `${count(response.files.length, 'file')}, ${formatSize(total)} echoed: see the chunks in the server log.` }
  }
}

function showError (status, error) {
  status.className = 'status error'
  status.replaceChildren()
  if (error.code !== undefined) {
    status.append(element('strong', undefined, `${error.statusCode ?? ''} ${error.code}`.trim()), document.createElement('br'))
  }
  status.append(error.message)
}

/** One line per file: name, size, progress bar, state, cancel button. */
function fileLine (file) {
  const line = element('li', 'file')
  line.dataset.name = file.name
  const bar = element('progress')
  bar.max = 100
  bar.value = 0
  const percent = element('span', 'percent', '0 %')
  const state = element('span', 'state', 'waiting')
  const cancel = element('button', 'cancel', 'Cancel')
  cancel.type = 'button'
  const controller = new AbortController()
  cancel.addEventListener('click', () => controller.abort())
  line.append(element('span', 'name', file.name), element('span', 'size', formatSize(file.size)), bar, percent, state, cancel)
  return {
    line,
    signal: controller.signal,
    show ({ progress, status }) {
      bar.value = progress
      percent.textContent = `${progress} %`
      state.textContent = status
      line.dataset.status = status
      if (status !== 'uploading') cancel.disabled = true
    },
    /** The outcome: the error's code and message, if any. */
    end (outcome) {
      cancel.disabled = true
      if (outcome.ok) return
      state.textContent = `${outcome.code}: ${outcome.message}`
      line.dataset.status = outcome.code === 'cancelled' ? 'cancelled' : 'failed'
    },
    /**
     * Refused by the route although its bytes were sent: over HTTP the request succeeds
     * (the client says `done`), and only the handler's answer lists the file's error.
     * Nothing of it was stored, so the bar goes back to empty.
     */
    refuse (code) {
      bar.value = 0
      percent.textContent = '–'
      state.textContent = errorText(code)
      line.dataset.status = 'failed'
    }
  }
}

/** The form's text fields (not its files, nor the demo's own switches). */
function fieldsOf (form) {
  const fields = {}
  for (const input of form.querySelectorAll('input[type="text"]')) fields[input.name] = input.value
  return fields
}

async function submit (form) {
  const section = form.closest('section')
  const status = section.querySelector('.status')
  const table = section.querySelector('table')
  const queue = section.querySelector('.queue')
  const button = form.querySelector('button[type="submit"]')
  const input = form.querySelector('input[type="file"]')
  const files = [...input.files]
  if (files.length === 0) {
    status.className = 'status'
    status.textContent = 'Choose or drop some files first.'
    return
  }
  const transport = document.querySelector('input[name="transport"]:checked').value
  const lines = new Map(files.map((file) => [file, fileLine(file)]))
  queue.replaceChildren(...[...lines.values()].map(({ line }) => line))
  // Over HTTP the files share one request: cancelling one cancels it.
  if (transport === 'http') for (const { line } of lines.values()) line.querySelector('.cancel').title = 'Over HTTP this cancels the whole request'
  button.disabled = true
  status.className = 'status'
  status.textContent = `Uploading over ${TRANSPORTS[transport]}…`
  table.hidden = true
  const slow = form.querySelector('input[name="slow"]')?.checked === true
  try {
    // Resumable: Uppy to {route}/tus, then the upload URLs to the route. Same arguments, same result.
    const send = transport === 'resumable' ? (await loadResumable()).uploadResumable : upload
    const result = await send(form.action + (slow ? '?slow=1' : ''), files.map((file) => ({ file, signal: lines.get(file).signal })), {
      uploadName: input.name,
      transport,
      submit: true, // over the channel: post the refs to the route, and return its answer
      fields: fieldsOf(form),
      onProgress: (file, progress) => lines.get(file).show(progress)
    })
    files.forEach((file, i) => lines.get(file).end(result.files[i]))
    if (result.response === undefined) {
      const failed = result.files.find((outcome) => !outcome.ok)
      return showError(status, { code: failed.code, message: failed.message })
    }
    if (result.status >= 400) return showError(status, result.response)
    // The entries the route refused, by file name, each to one line the client saw succeed.
    const sent = files.filter((file, i) => result.files[i].ok)
    for (const error of result.response.errors ?? []) {
      const index = sent.findIndex((file) => file.name === error.clientName)
      if (index === -1) continue
      lines.get(sent[index]).refuse(error.code)
      sent.splice(index, 1)
    }
    const { rows, summary } = views[form.id](result.response, result.files)
    table.tBodies[0].replaceChildren(...rows)
    table.hidden = rows.length === 0
    status.textContent = summary
  } catch (error) {
    showError(status, { message: `The upload failed: ${error.message}` })
  } finally {
    button.disabled = false
    input.value = ''
  }
}

// Choosing the resumable mode loads it (and the Uppy bundle) ahead of the first upload.
for (const radio of document.querySelectorAll('input[name="transport"]')) {
  radio.addEventListener('change', () => {
    if (radio.checked && radio.value === 'resumable') loadResumable().catch(() => {}) // an upload would say why
  })
}

for (const form of document.querySelectorAll('form')) {
  form.addEventListener('submit', (event) => {
    event.preventDefault()
    submit(form)
  })
  // Dropped files become the input's files, as if chosen.
  const drop = form.querySelector('.drop')
  const input = drop.querySelector('input[type="file"]')
  drop.addEventListener('dragover', (event) => {
    event.preventDefault()
    drop.classList.add('over')
  })
  drop.addEventListener('dragleave', () => drop.classList.remove('over'))
  drop.addEventListener('drop', (event) => {
    event.preventDefault()
    drop.classList.remove('over')
    input.files = event.dataTransfer.files
  })
}
