// Every error the plugin raises, in one table: its code, message and HTTP status, and for
// the errors that can end an entry, `uploadCode`, the short code `request.uploads.errors()`
// reports. Built with @fastify/error by two typed functions: each `%s` of a message is one
// argument (a string or a number), so a call with the wrong arguments does not compile;
// `entryError` puts the entry code on the error's prototype, so every instance carries it
// and the type says so (no tagging, no casts).
import createError, { type FastifyErrorConstructor } from '@fastify/error'

/** An error that ends an entry: its HTTP status and the short entry-level code it maps to. */
export type EntryFailure = Error & { statusCode: number, code: string, uploadCode: string }

/** One argument per `%s` of the message. */
type ArgsOf<M extends string> = M extends `${string}%s${infer Rest}` ? [string | number, ...ArgsOf<Rest>] : []
/** The message's arguments, optionally followed by `{ cause }` (@fastify/error takes it from there). */
type Args<M extends string> = ArgsOf<M> | [...ArgsOf<M>, { cause: unknown }]

/** `createError`, with arguments typed by the message. */
function codedError<C extends string, const M extends string, S extends number> (code: C, message: M, statusCode: S, Base?: ErrorConstructor) {
  return createError<C, S, Args<M>>(code, message, statusCode, Base)
}

/** `codedError`, for an error that can end an entry: its instances carry `uploadCode`. */
function entryError<C extends string, const M extends string, S extends number> (code: C, message: M, statusCode: S, uploadCode: string) {
  const constructor = codedError(code, message, statusCode)
  // Writable, so a transport may still say better on one instance (see `asFailure`).
  Object.defineProperty(constructor.prototype, 'uploadCode', { value: uploadCode, writable: true, configurable: true })
  // The one cast: the property set just above, which createError's type cannot know.
  return constructor as FastifyErrorConstructor<{ code: C, statusCode: S, uploadCode: string }, Args<M>>
}

export const TooLargeError = entryError('FST_CHUNKED_UPLOAD_TOO_LARGE', 'File "%s" for "%s" exceeds the size limit of %s bytes', 413, 'too_large')
export const TooManyFilesError = entryError('FST_CHUNKED_UPLOAD_TOO_MANY_FILES', 'Too many files for "%s": at most %s allowed', 413, 'too_many_files')
export const NotAcceptedError = entryError('FST_CHUNKED_UPLOAD_NOT_ACCEPTED', 'File "%s" of type "%s" is not accepted for "%s"', 415, 'not_accepted')
export const ValidateFailureError = entryError('FST_CHUNKED_UPLOAD_VALIDATE_FAILURE', 'The check of "%s" failed', 500, 'validate_failure')
export const InvalidEntryError = codedError('FST_CHUNKED_UPLOAD_INVALID', 'File "%s" for "%s" was refused: %s', 422)
export const UnexpectedFieldError = codedError('FST_CHUNKED_UPLOAD_UNEXPECTED_FILE', 'Unexpected file field "%s": this route accepts uploads for %s', 400)
export const NoUploadNameError = codedError('FST_CHUNKED_UPLOAD_NO_UPLOAD_NAME', 'This route accepts several uploads (%s): name one with the "upload" query parameter', 400)
export const ForbiddenFieldNameError = codedError('FST_CHUNKED_UPLOAD_FORBIDDEN_FIELD_NAME', 'Field name "%s" is not allowed', 400)
export const FieldsLimitError = codedError('FST_CHUNKED_UPLOAD_FIELDS_LIMIT', 'Too many form fields: at most %s allowed', 413)
export const FieldsTooLargeError = codedError('FST_CHUNKED_UPLOAD_FIELDS_TOO_LARGE', 'Form fields exceed %s bytes in total (the route bodyLimit)', 413)
export const FieldTooLargeError = codedError('FST_CHUNKED_UPLOAD_FIELD_TOO_LARGE', 'Form field "%s" exceeds %s bytes', 413)
export const MalformedError = entryError('FST_CHUNKED_UPLOAD_MALFORMED', 'Malformed multipart body: %s', 400, 'cancelled')
export const PrematureCloseError = entryError('FST_CHUNKED_UPLOAD_PREMATURE_CLOSE', 'The request closed before its body ended', 400, 'cancelled')
export const BodyUnreadableError = entryError('FST_CHUNKED_UPLOAD_BODY_UNREADABLE', 'The request body could not be read (%s)', 400, 'cancelled')
export const ChunkTimeoutError = entryError('FST_CHUNKED_UPLOAD_CHUNK_TIMEOUT', 'No bytes arrived for %s ms', 408, 'chunk_timeout')
export const WriterFailureError = entryError('FST_CHUNKED_UPLOAD_WRITER_FAILURE', 'The upload of "%s" could not be stored', 500, 'writer_failure')
export const CancelledError = entryError('FST_CHUNKED_UPLOAD_CANCELLED', 'The upload of "%s" was cancelled', 400, 'cancelled')
export const ShuttingDownError = entryError('FST_CHUNKED_UPLOAD_SHUTTING_DOWN', 'The server is shutting down', 503, 'cancelled')
export const WriterTimeoutError = codedError('FST_CHUNKED_UPLOAD_WRITER_TIMEOUT', 'Writer call %s took longer than %s ms', 500)
export const UnknownEntryError = codedError('FST_CHUNKED_UPLOAD_UNKNOWN_ENTRY', 'No completed entry "%s" to consume', 404)
export const InProgressError = codedError('FST_CHUNKED_UPLOAD_IN_PROGRESS', 'Cannot consume "%s" while entries are still uploading', 409)
export const InvalidConfigError = codedError('FST_CHUNKED_UPLOAD_INVALID_CONFIG', '%s', 500, TypeError)
export const UnknownRefError = codedError('FST_CHUNKED_UPLOAD_UNKNOWN_REF', 'Upload ref %s for "%s" is unknown, expired, already used or not yours', 400)
export const ChannelNeedsWebsocketError = codedError('FST_CHUNKED_UPLOAD_NO_WEBSOCKET', 'The upload channel of %s needs @fastify/websocket: register it after fastify-chunked-upload and before the routes, or set channel: false', 500)
export const ChannelOrderError = codedError('FST_CHUNKED_UPLOAD_WEBSOCKET_ORDER', 'With channel: true, register fastify-chunked-upload before @fastify/websocket: at shutdown, @fastify/websocket closes every socket without a code, and the plugin must first tell channel sockets why (shutting_down, then 1001)', 500)
export const BadResumableHeaderError = codedError('FST_CHUNKED_UPLOAD_BAD_HEADER', 'Header %s must be %s', 400)
export const ResumableVersionError = codedError('FST_CHUNKED_UPLOAD_UNSUPPORTED_VERSION', 'Unsupported protocol version: send Tus-Resumable: 1.0.0, or Upload-Draft-Interop-Version 5 to 8', 412)
export const ResumableMediaTypeError = codedError('FST_CHUNKED_UPLOAD_BAD_CONTENT_TYPE', 'An append needs Content-Type %s', 415)
export const OffsetMismatchError = codedError('FST_CHUNKED_UPLOAD_OFFSET_MISMATCH', 'Upload-Offset %s does not match the upload offset %s', 409)
export const UploadNotFoundError = codedError('FST_CHUNKED_UPLOAD_NOT_FOUND', 'No such upload', 404)
export const UploadGoneError = codedError('FST_CHUNKED_UPLOAD_GONE', 'The upload ended: %s', 410)
export const UploadCompletedError = codedError('FST_CHUNKED_UPLOAD_COMPLETED', 'The upload is already complete', 400)
export const FinalUploadError = codedError('FST_CHUNKED_UPLOAD_FINAL', 'A final (concatenated) upload cannot be appended to', 403)
export const UploadLengthError = codedError('FST_CHUNKED_UPLOAD_LENGTH', '%s', 400)
export const ChecksumMismatchError = codedError('FST_CHUNKED_UPLOAD_CHECKSUM_MISMATCH', 'Upload-Checksum does not match the body: nothing was stored', 460)
export const ChecksumBodyTooLargeError = codedError('FST_CHUNKED_UPLOAD_CHECKSUM_BODY_TOO_LARGE', 'An append with Upload-Checksum may carry at most %s bytes', 413)
export const BadConcatError = codedError('FST_CHUNKED_UPLOAD_BAD_CONCAT', '%s', 400)
export const RouteConflictError = codedError(
  'FST_CHUNKED_UPLOAD_ROUTE_CONFLICT',
  'Routes %s and %s share the %s %s but differ in %s: declare them alike, or give them different paths', 500, TypeError
)
export const HookOrderError = codedError(
  'FST_CHUNKED_UPLOAD_HOOK_ORDER',
  'A preParsing hook was added to %s after fastify-chunked-upload\'s, which takes the body: register the plugin that adds it before fastify-chunked-upload, or (on a route with a channel or resumable endpoint) declare that hook on the route itself', 500, TypeError
)
export const PluginOrderError = codedError(
  'FST_CHUNKED_UPLOAD_PLUGIN_ORDER',
  'A plugin registered before fastify-chunked-upload added %s hooks to %s from its onRoute hook: they would run twice on %s, which it derives. Register fastify-chunked-upload before that plugin', 500, TypeError
)
export const PastLengthError = entryError('FST_CHUNKED_UPLOAD_PAST_LENGTH', 'The append goes past the upload length of %s bytes (Upload-Length)', 413, 'too_large')
export const TooManyUploadsError = entryError('FST_CHUNKED_UPLOAD_TOO_MANY_UPLOADS', 'The server holds its most resumable uploads (%s, maxResumableUploads): try again later', 503, 'too_many_files')
export const MethodNotAllowedError = codedError('FST_CHUNKED_UPLOAD_METHOD_NOT_ALLOWED', 'Method %s is not allowed here: use %s', 405)
export const ConcatReadError = codedError('FST_CHUNKED_UPLOAD_CONCAT_READ', 'Partial upload %s could not be read: the final upload ended', 500)
export const BadOwnerError = codedError('FST_CHUNKED_UPLOAD_BAD_OWNER', 'The owner option must return a string, or undefined for nobody (it returned a %s)', 500)
export const AlreadyRegisteredError = codedError('FST_CHUNKED_UPLOAD_ALREADY_REGISTERED', 'fastify-chunked-upload is already registered in this scope', 500)
export const UploadExistsError = codedError('FST_CHUNKED_UPLOAD_STORE_EXISTS', 'Upload %s is already in the store', 409)
export const StaleUpdateError = codedError('FST_CHUNKED_UPLOAD_STALE_UPDATE', 'Upload %s was not updated: %s', 409)
export const StoreInUseError = codedError('FST_CHUNKED_UPLOAD_STORE_IN_USE', 'Store directory %s is in use by process %s: give each running process, and each plugin instance in one, its own tmpDir (or store)', 500)
export const StoreFailureError = entryError('FST_CHUNKED_UPLOAD_STORE_FAILURE', 'The upload could not be saved in its store: it ended', 500, 'writer_failure')
export const CorruptRecordError = codedError('FST_CHUNKED_UPLOAD_STORE_CORRUPT', 'Store file %s could not be read (%s): it was set aside as %s', 500)

/** A refusal by the route's `validate`: the entry code is the one the check returned. */
export function invalidEntry (clientName: string, uploadName: string, uploadCode: string): EntryFailure {
  return Object.assign(new InvalidEntryError(clientName, uploadName, uploadCode), { uploadCode })
}

/**
 * Any error, as the failure that ends an entry. Errors that carry their own HTTP status (ours,
 * or a hook's coded error) pass through, recording `cancelled` unless they say better; anything
 * else a parser or stream threw is a malformed body.
 */
export function asFailure (error: unknown): EntryFailure {
  if (!carriesStatus(error)) return new MalformedError((error as Error).message)
  return Object.assign(error, { uploadCode: error.uploadCode ?? 'cancelled' })
}

function carriesStatus (error: unknown): error is Error & { statusCode: number, code: string, uploadCode?: string } {
  return error instanceof Error && typeof (error as { statusCode?: unknown }).statusCode === 'number'
}
