// In a page served by the app above, with an <input type="file">; 'tus-js-client'
// resolved by your bundler (or an import map).
import * as tus from 'tus-js-client'

const headers = { authorization: 'Bearer secret' }   // what requireLogin wants
document.querySelector('input[type="file"]').addEventListener('change', (event) => {
  const file = event.target.files[0]
  const upload = new tus.Upload(file, {
    endpoint: '/videos/tus',
    headers,
    metadata: { filename: file.name, filetype: file.type },
    onError: (error) => console.error(error),
    onSuccess: async () => {
      const response = await fetch('/videos', {
        method: 'POST',
        headers: { ...headers, 'content-type': 'application/json' },
        body: JSON.stringify({ video: upload.url })
      })
      console.log(await response.json())   // [{ name, size }]: what the route consumed
    }
  })
  upload.start()
})
