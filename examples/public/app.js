// Submits each form with fetch(FormData) and shows what the route handler consumed.

const sizeFormat = new Intl.NumberFormat('en', { maximumFractionDigits: 1 })

function formatSize (bytes) {
  if (bytes < 1000) return `${bytes} B`
  if (bytes < 1_000_000) return `${sizeFormat.format(bytes / 1000)} kB`
  return `${sizeFormat.format(bytes / 1_000_000)} MB`
}

/** A table row; each cell is a string or `{ text, className }`. */
function row (className, cells) {
  const tr = document.createElement('tr')
  tr.className = className
  for (const cell of cells) {
    const td = document.createElement('td')
    const { text, className } = typeof cell === 'object' ? cell : { text: cell }
    td.textContent = text
    if (className !== undefined) td.className = className
    tr.append(td)
  }
  return tr
}

const ERROR_TEXT = {
  too_large: 'too large',
  too_many_files: 'too many files',
  not_accepted: 'type not accepted'
}

const views = {
  // /upload/files: { note, files: [{ name, type, size, sha256 }], errors: [{ clientName, code }] }
  'files-form' (result) {
    const rows = result.files.map((file) => row('ok', [
      file.name, file.type || '?', { text: formatSize(file.size), className: 'num' }, { text: file.sha256, className: 'hash' }
    ]))
    for (const error of result.errors) {
      rows.push(row('failed', [error.clientName ?? '(upload)', '', '', `${error.code}: ${ERROR_TEXT[error.code] ?? 'refused'}`]))
    }
    const note = result.note === '' ? '' : ` Note: “${result.note}”.`
    return { rows, summary: `${result.files.length} stored, ${result.errors.length} refused.${note}` }
  },
  // /upload/echo: { files: [{ name, type, total, chunks }] }
  'echo-form' (result) {
    const rows = result.files.map((file) => row('ok', [
      file.name, file.type || '?', { text: file.total.toLocaleString('en'), className: 'num' }, { text: String(file.chunks), className: 'num' }
    ]))
    const total = result.files.reduce((sum, file) => sum + file.total, 0)
    return { rows, summary: `${result.files.length} files, ${formatSize(total)} echoed: see the chunks in the server log.` }
  }
}

function showError (status, error) {
  status.className = 'status error'
  status.replaceChildren()
  if (error.code !== undefined) {
    const code = document.createElement('strong')
    code.textContent = `${error.statusCode} ${error.code}`
    status.append(code, document.createElement('br'))
  }
  status.append(error.message)
}

async function submit (form) {
  const section = form.closest('section')
  const status = section.querySelector('.status')
  const table = section.querySelector('table')
  const button = form.querySelector('button')
  button.disabled = true
  status.className = 'status'
  status.textContent = 'Uploading…'
  table.hidden = true
  try {
    const response = await fetch(form.action, { method: 'POST', body: new FormData(form) })
    const result = await response.json()
    if (!response.ok) return showError(status, result)
    const { rows, summary } = views[form.id](result)
    table.tBodies[0].replaceChildren(...rows)
    table.hidden = rows.length === 0
    status.textContent = summary
  } catch (error) {
    // e.g. the server closed the connection before the browser had sent the whole body
    showError(status, { message: `The upload failed: ${error.message}` })
  } finally {
    button.disabled = false
  }
}

for (const form of document.querySelectorAll('form')) {
  form.addEventListener('submit', (event) => {
    event.preventDefault()
    submit(form)
  })
}
