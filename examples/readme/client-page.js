// In a page with an <input type="file" name="photos" multiple>; 'fastify-chunked-upload/client'
// comes through your bundler, or an import map to dist/client/index.js.
import { upload } from 'fastify-chunked-upload/client'

const input = document.querySelector('input[name="photos"]')
input.addEventListener('change', async () => {
  // A bar per file, keyed by the File the client reports progress for.
  const bars = new Map([...input.files].map((file) => [file, document.body.appendChild(document.createElement('progress'))]))
  for (const bar of bars.values()) bar.max = 100
  const result = await upload('/upload/photos', input.files, {
    uploadName: 'photos',                   // the route's allowUpload key (required)
    submit: true,                           // then post the refs to the route, return its answer
    fields: { album: 'holidays' },          // text fields, sent with the refs (or the files, over HTTP)
    onProgress: (file, { progress, bytes, status }) => { bars.get(file).value = progress }
  })
  // result.files: [{ name, ok: true, ref } | { name, ok: false, code, message }], one per file, in order
  // result.response: the route handler's answer (parsed JSON, or text); result.status its HTTP status
  console.log(result)
})
