// Torpor's addition to node-llama-cpp's addon: a sequence's state written to a hibernation file as
// llama.cpp streams it out, sealed or plain, and read back as llama.cpp streams it in.
//
// Sealed, no plaintext exists anywhere but the KV cache and a 1 MiB chunk buffer. Plain, the file
// is written in 1 MiB writes with its xxHash64 computed on the way, large pieces straight from the
// KV cache: llama.cpp's own file writer sends a state without flash attention (V stored
// transposed) as one small write per row, tens of thousands for 100 MB, and the checksum then
// needed a second pass that read the file back. A plain state is read back in one pass too, its
// xxHash64 on a second thread (PlainReader).
//
// Both writers have the disk start on each chunk as it is written (startWriteback), so the fsync
// that commits the file waits for its tail; prefetchStateFile has the page cache filled on a thread
// of its own while the rehydrate allocates its context and the reader copies what came before.
//
// node-llama-cpp 3.22.1 saves and loads a sequence only through a file llama.cpp opens itself, so
// a sealed hibernation had to stage the plaintext in a file, read it back to encrypt it, and do the
// reverse to rehydrate: two more passes over every state, and plaintext on the node's disk. Here
// llama.cpp's own state writer and reader (llama_memory_i::state_write/state_read, the calls its
// llama_state_seq_save_file/load_file make) talk to an io that encrypts or decrypts 1 MiB chunks.
//
// The plaintext is byte for byte llama.cpp's sequence-state file (magic, version, token count,
// tokens, then the state), and the sealed layout is runtime/storage/sealed-chunks.ts's: per chunk
// a u32 (big-endian) plaintext length, the AES-256-GCM ciphertext, the 16-byte tag; chunk i at
// headerBytes + i * (4 + CHUNK + 16); nonce = the file's 8-byte prefix and i (big-endian u32);
// associated data = the file's identity, i (big-endian u32) and a last-chunk flag. Files sealed
// here open there and the reverse (tests), so runtimes with and without this addon share volumes.
//
// Every chunk is authenticated before any byte of it reaches llama.cpp. A chunk that does not
// authenticate, a missing or extra chunk, or a length that disagrees fails the load with code
// TORPOR_SEAL_INVALID, and whatever the sequence had received is removed.
//
// The caller serialises these with the sequence's evaluation and the context's batch, as
// node-llama-cpp's own saveStateToFile does (its "evaluate" and "context" locks), owns the file
// descriptor (opened, checked, synced and closed in JavaScript) and writes the sealed file's header.
#include "AddonContext.h"

#include <openssl/evp.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <thread>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>
#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/uio.h>
#include <unistd.h>

#include "ggml-backend.h"
#include "llama-io.h"
#include "llama-memory.h"

#define XXH_INLINE_ALL
#include "xxhash.h"

namespace {

constexpr size_t CHUNK = 1 << 20;
constexpr size_t LEN = 4;
constexpr size_t TAG = 16;
constexpr size_t SEALED_CHUNK = LEN + CHUNK + TAG;
constexpr uint32_t FILE_MAGIC = 0x67677371u;  // LLAMA_STATE_SEQ_MAGIC ('ggsq')
constexpr uint32_t FILE_VERSION = 3;          // LLAMA_STATE_SEQ_VERSION

// A failure that says the file is not authentic (tampered, truncated, transplanted, wrong key).
struct SealInvalid : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct SealParams {
    int fd = -1;
    std::vector<uint8_t> key;
    std::vector<uint8_t> prefix;
    std::vector<uint8_t> fileAad;
    uint64_t headerBytes = 0;
};

std::vector<uint8_t> bytesOf(const Napi::Value& value, const char* what, size_t exactLength = 0) {
    if (!value.IsTypedArray()) throw std::invalid_argument(std::string(what) + " must be a Uint8Array");
    Napi::Uint8Array array = value.As<Napi::Uint8Array>();
    if (exactLength != 0 && array.ByteLength() != exactLength) throw std::invalid_argument(std::string(what) + " has the wrong length");
    return std::vector<uint8_t>(array.Data(), array.Data() + array.ByteLength());
}

void putU32BE(uint8_t* at, uint32_t v) {
    at[0] = uint8_t(v >> 24); at[1] = uint8_t(v >> 16); at[2] = uint8_t(v >> 8); at[3] = uint8_t(v);
}

uint32_t getU32BE(const uint8_t* at) {
    return (uint32_t(at[0]) << 24) | (uint32_t(at[1]) << 16) | (uint32_t(at[2]) << 8) | uint32_t(at[3]);
}

// An xxHash64 as hex, big-endian (what hash-wasm prints, and the manifests hold).
std::string hexDigest(XXH64_state_t* hash) {
    XXH64_canonical_t canonical;
    XXH64_canonicalFromHash(&canonical, XXH64_digest(hash));
    static const char digits[] = "0123456789abcdef";
    std::string hex;
    for (unsigned char b : canonical.digest) { hex += digits[b >> 4]; hex += digits[b & 15]; }
    return hex;
}

// A state file whose bytes are not the ones its manifest recorded (the checksum differs).
struct ChecksumMismatch : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A chunk buffer of this thread's (a libuv pool thread), kept for the next call: a new 1 MiB buffer
// is page-faulted and zeroed on every hibernate and rehydrate (with transparent huge pages a 2 MiB
// page each), which cost more than reading a 68 MiB state from the page cache (perf: 19% of a
// rehydrate in clear_page). At most six per thread, about 6 MiB, for as long as the process lives.
class Scratch {
    public:
        Scratch() = default;
        ~Scratch() { if (index >= 0) pool().used[index] = false; }
        Scratch(const Scratch&) = delete;
        Scratch& operator=(const Scratch&) = delete;

        void resize(size_t size) {
            Pool& p = pool();
            for (int i = 0; index < 0 && i < Pool::SIZE; i++) if (!p.used[i]) { index = i; p.used[i] = true; }
            if (index < 0) throw std::runtime_error("no chunk buffer free on this thread");
            if (p.buffers[index].size() < size) p.buffers[index].resize(size);
        }
        uint8_t* data() { return pool().buffers[index].data(); }

    private:
        struct Pool {
            static constexpr int SIZE = 6;
            std::vector<uint8_t> buffers[SIZE];
            bool used[SIZE] = {};
        };
        static Pool& pool() {
            thread_local Pool threadPool;
            return threadPool;
        }
        int index = -1;
};

// One AES-256-GCM context, reused for every chunk of a file.
class ChunkCipher {
    public:
        ChunkCipher(const SealParams& params) : params(params), ctx(EVP_CIPHER_CTX_new()) {
            if (ctx == nullptr) throw std::runtime_error("EVP_CIPHER_CTX_new failed");
            aad.assign(params.fileAad.begin(), params.fileAad.end());
            aad.resize(params.fileAad.size() + 5);
        }
        ~ChunkCipher() { EVP_CIPHER_CTX_free(ctx); }
        ChunkCipher(const ChunkCipher&) = delete;
        ChunkCipher& operator=(const ChunkCipher&) = delete;

        // Seals `length` bytes of `plain` as chunk `index` into `out`: length, ciphertext, tag.
        size_t seal(const uint8_t* plain, size_t length, uint32_t index, bool last, uint8_t* out) {
            start(true, index, last);
            putU32BE(out, uint32_t(length));
            int n = 0, fin = 0;
            if (length > 0 && EVP_EncryptUpdate(ctx, out + LEN, &n, plain, int(length)) != 1) throw std::runtime_error("EVP_EncryptUpdate failed");
            if (EVP_EncryptFinal_ex(ctx, out + LEN + n, &fin) != 1) throw std::runtime_error("EVP_EncryptFinal_ex failed");
            if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, int(TAG), out + LEN + length) != 1) throw std::runtime_error("EVP_CTRL_GCM_GET_TAG failed");
            return LEN + length + TAG;
        }

        // Opens sealed chunk `index` (`length` plaintext bytes expected) from `in` into `plain`.
        void open(const uint8_t* in, size_t length, uint32_t index, bool last, uint8_t* plain) {
            if (getU32BE(in) != length) throw SealInvalid("corrupt chunk length");
            start(false, index, last);
            int n = 0, fin = 0;
            if (length > 0 && EVP_DecryptUpdate(ctx, plain, &n, in + LEN, int(length)) != 1) throw std::runtime_error("EVP_DecryptUpdate failed");
            if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, int(TAG), const_cast<uint8_t*>(in + LEN + length)) != 1) throw std::runtime_error("EVP_CTRL_GCM_SET_TAG failed");
            if (EVP_DecryptFinal_ex(ctx, plain + n, &fin) != 1) {
                throw SealInvalid("chunk " + std::to_string(index) + " does not authenticate (tampered, truncated, or sealed for another session, namespace or model)");
            }
        }

    private:
        void start(bool encrypt, uint32_t index, bool last) {
            uint8_t nonce[12];
            std::memcpy(nonce, params.prefix.data(), 8);
            putU32BE(nonce + 8, index);
            const EVP_CIPHER* cipher = EVP_aes_256_gcm();
            int ok = encrypt ? EVP_EncryptInit_ex(ctx, cipher, nullptr, params.key.data(), nonce)
                             : EVP_DecryptInit_ex(ctx, cipher, nullptr, params.key.data(), nonce);
            if (ok != 1) throw std::runtime_error("AES-256-GCM init failed");
            putU32BE(aad.data() + params.fileAad.size(), index);
            aad[params.fileAad.size() + 4] = last ? 1 : 0;
            int n = 0;
            ok = encrypt ? EVP_EncryptUpdate(ctx, nullptr, &n, aad.data(), int(aad.size()))
                         : EVP_DecryptUpdate(ctx, nullptr, &n, aad.data(), int(aad.size()));
            if (ok != 1) throw std::runtime_error("AES-256-GCM associated data failed");
        }

        const SealParams& params;
        EVP_CIPHER_CTX* ctx;
        std::vector<uint8_t> aad;
};

void pwriteAll(int fd, const uint8_t* data, size_t length, uint64_t offset) {
    while (length > 0) {
        ssize_t n = pwrite(fd, data, length, off_t(offset));
        if (n < 0) {
            if (errno == EINTR) continue;
            throw std::runtime_error(std::string("write failed: ") + std::strerror(errno));
        }
        data += n; length -= size_t(n); offset += uint64_t(n);
    }
}

// Starts the disk writing what was just written, without waiting for it: the fsync that commits
// the file then waits only for the tail and the journal, not for the whole state, most of which
// went to the disk while llama.cpp streamed the rest (RocksDB's bytes_per_sync, PostgreSQL's
// checkpoint flushing). Linux only; a volume that does not support it (EINVAL, ESPIPE, ENOSYS: a
// FUSE or network file system, say) is simply synced at the end, as before.
void startWriteback(int fd, uint64_t offset, size_t length) {
#if defined(__linux__)
    sync_file_range(fd, off_t(offset), off_t(length), SYNC_FILE_RANGE_WRITE);
#else
    (void)fd; (void)offset; (void)length;
#endif
}

size_t preadAll(int fd, uint8_t* data, size_t length, uint64_t offset) {
    size_t got = 0;
    while (got < length) {
        ssize_t n = pread(fd, data + got, length - got, off_t(offset + got));
        if (n < 0) {
            if (errno == EINTR) continue;
            throw std::runtime_error(std::string("read failed: ") + std::strerror(errno));
        }
        if (n == 0) break;
        got += size_t(n);
    }
    return got;
}

// Where a piece of a tensor lies in host memory, for reading or writing it in place; nullptr when
// it should go through a chunk buffer: a short piece (llama.cpp sends a state stored transposed,
// without flash attention, one row at a time) or a tensor outside host memory.
constexpr size_t IN_PLACE = 64 << 10;
uint8_t* inPlace(ggml_tensor* tensor, size_t offset, size_t size) {
    if (offset + size > ggml_nbytes(tensor)) throw std::runtime_error("a state piece past its tensor");
    if (size < IN_PLACE || tensor->buffer == nullptr || !ggml_backend_buffer_is_host(tensor->buffer)) return nullptr;
    return static_cast<uint8_t*>(tensor->data) + offset;
}

// An xxHash64 over pieces of memory, in the order they are given, on a thread of its own: the
// reader goes on reading (or copying) the next piece while the last one is hashed. A piece's
// memory must stay as it is until waitFor(its number) returns.
class OrderedHasher {
    public:
        OrderedHasher() : hash(XXH64_createState()) {
            if (hash == nullptr) throw std::runtime_error("XXH64_createState failed");
            XXH64_reset(hash, 0);
            worker = std::thread([this] { run(); });
        }
        ~OrderedHasher() {
            {
                std::lock_guard<std::mutex> lock(mutex);
                stopping = true;
            }
            wake.notify_all();
            worker.join();
            XXH64_freeState(hash);
        }
        OrderedHasher(const OrderedHasher&) = delete;
        OrderedHasher& operator=(const OrderedHasher&) = delete;

        uint64_t submit(const uint8_t* data, size_t length) {
            std::lock_guard<std::mutex> lock(mutex);
            pieces.push_back({data, length});
            wake.notify_all();
            return ++submitted;
        }

        void waitFor(uint64_t piece) {
            std::unique_lock<std::mutex> lock(mutex);
            done.wait(lock, [&] { return hashed >= piece; });
        }

        // Every piece given so far, hashed: the digest as hex.
        std::string digest() {
            waitFor(submitted);
            return hexDigest(hash);
        }

    private:
        void run() {
            std::unique_lock<std::mutex> lock(mutex);
            for (;;) {
                wake.wait(lock, [&] { return stopping || !pieces.empty(); });
                if (pieces.empty()) return;
                const auto piece = pieces.front();
                pieces.pop_front();
                lock.unlock();
                XXH64_update(hash, piece.first, piece.second);
                lock.lock();
                hashed++;
                done.notify_all();
            }
        }

        XXH64_state_t* hash;
        std::mutex mutex;
        std::condition_variable wake, done;
        std::deque<std::pair<const uint8_t*, size_t>> pieces;
        uint64_t submitted = 0;
        uint64_t hashed = 0;
        bool stopping = false;
        std::thread worker;
};

// llama.cpp's state writer into a file in 1 MiB pieces: sealed chunks when there is a cipher (a
// full chunk is sealed only once a byte after it arrives, so the one sealed by finish() is the
// last, whatever the size), else the plaintext as it is, with its xxHash64.
class StateFileWriter : public llama_io_write_i {
    public:
        StateFileWriter(const SealParams& params, bool sealed) : params(params) {
            plain[0].resize(CHUNK);
            plain[1].resize(CHUNK);
            if (sealed) {
                cipher = std::make_unique<ChunkCipher>(params);
                out[0].resize(SEALED_CHUNK);
                out[1].resize(SEALED_CHUNK);
            } else {
                hasher = std::make_unique<OrderedHasher>();
            }
        }
        ~StateFileWriter() override {
            if (encrypting.valid()) encrypting.wait();
        }

        void write(const void* src, size_t size) override {
            const uint8_t* from = static_cast<const uint8_t*>(src);
            while (size > 0) {
                const size_t piece = room(size);
                std::memcpy(plain[current].data() + fill, from, piece);
                fill += piece; from += piece; size -= piece; total += piece;
            }
        }

        void write_tensor(ggml_tensor* tensor, size_t offset, size_t size) override {
            // Plain, a large piece is written from where it lies, after what is buffered: no copy of
            // the KV cache. (Sealed, every byte goes through AES.)
            if (const uint8_t* from = cipher ? nullptr : inPlace(tensor, offset, size)) {
                flush(false);
                for (size_t done = 0; done < size; done += CHUNK) writePlain(from + done, std::min(CHUNK, size - done));
                total += size;
                return;
            }
            while (size > 0) {
                const size_t piece = room(size);
                ggml_backend_tensor_get(tensor, plain[current].data() + fill, offset, piece);
                fill += piece; offset += piece; size -= piece; total += piece;
            }
        }

        size_t n_bytes() override { return total; }

        void finish() {
            flush(true);
            if (cipher) guarded([&] { writeSealed(); });
        }

        /** The plaintext's xxHash64 as hex (plain). */
        std::string xxh64() { return hasher->digest(); }

        // Why a write failed (a full disk, say), if one did: llama.cpp may catch what its writer
        // throws and throw its own error, so the reason is kept here too.
        std::string writeError;

    private:
        size_t room(size_t want) {
            if (fill == CHUNK) flush(false);
            return std::min(want, CHUNK - fill);
        }

        template <typename F> void guarded(F&& f) {
            try {
                f();
            } catch (const std::exception& e) {
                writeError = e.what();
                throw;
            }
        }

        // Sealed: the chunk is encrypted on a second thread while this one writes the chunk before
        // it and goes on copying the next out of the KV cache (two cores do the AES and the rest
        // side by side). Plain: written here and hashed on the hasher's thread, the next chunk
        // filled in the other buffer once that one's hash is done.
        void flush(bool last) {
            guarded([&] {
                if (!cipher) {
                    if (fill == 0) return;
                    pending[current] = writePlain(plain[current].data(), fill);
                    current ^= 1;
                    hasher->waitFor(pending[current]);
                    return;
                }
                const bool previous = encrypting.valid();
                if (previous) sealedLength = encrypting.get();
                const int slot = current;
                const uint8_t* chunk = plain[slot].data();
                uint8_t* into = out[slot].data();
                const size_t length = fill;
                const uint32_t i = index++;
                encrypting = std::async(std::launch::async, [this, chunk, into, length, i, last] {
                    return cipher->seal(chunk, length, i, last, into);
                });
                if (previous) {
                    const uint64_t at = params.headerBytes + uint64_t(i - 1) * SEALED_CHUNK;
                    pwriteAll(params.fd, out[slot ^ 1].data(), sealedLength, at);
                    startWriteback(params.fd, at, sealedLength);
                }
                current ^= 1;
            });
            fill = 0;
        }

        // Plain: the file is the plaintext, written in order from `written` on; returns the piece's
        // number at the hasher (its memory must stay until the hash has passed it).
        uint64_t writePlain(const uint8_t* data, size_t length) {
            const uint64_t piece = hasher->submit(data, length);
            guarded([&] { pwriteAll(params.fd, data, length, params.headerBytes + written); });
            startWriteback(params.fd, params.headerBytes + written, length);
            written += length;
            return piece;
        }

        // The last chunk, once its encryption is done.
        void writeSealed() {
            const size_t n = encrypting.get();
            pwriteAll(params.fd, out[current ^ 1].data(), n, params.headerBytes + uint64_t(index - 1) * SEALED_CHUNK);
        }

        const SealParams& params;
        std::unique_ptr<ChunkCipher> cipher;
        Scratch plain[2];
        Scratch out[2];
        uint64_t pending[2] = {0, 0};
        int current = 0;
        size_t fill = 0;
        size_t total = 0;
        size_t sealedLength = 0;
        uint64_t written = 0;
        uint32_t index = 0;
        // Last: destroyed (joined, waited for) before the buffers they use.
        std::unique_ptr<OrderedHasher> hasher;
        std::future<size_t> encrypting;
};

// llama.cpp's state reader from sealed chunks, each opened and authenticated before it is served.
class OpeningReader : public llama_io_read_i {
    public:
        OpeningReader(const SealParams& params, uint32_t chunks, uint64_t plainBytes)
            : params(params), cipher(params), chunks(chunks), plainBytes(plainBytes) {
            plain.resize(CHUNK);
            sealed.resize(SEALED_CHUNK);
            // A cold file is read ahead while chunks are opened, instead of one 1 MiB read at a time
            // between decryptions: by prefetchStateFile's thread, and by the kernel's sequential
            // window (doubled) where this gets ahead of it. Advice only: failure changes nothing.
            posix_fadvise(params.fd, off_t(params.headerBytes), 0, POSIX_FADV_SEQUENTIAL);
        }

        void read(void* dst, size_t size) override {
            uint8_t* to = static_cast<uint8_t*>(dst);
            while (size > 0) {
                const size_t piece = available(size);
                std::memcpy(to, plain.data() + pos, piece);
                pos += piece; to += piece; size -= piece; total += piece;
            }
        }

        void read_tensor(ggml_tensor* tensor, size_t offset, size_t size) override {
            while (size > 0) {
                const size_t piece = available(size);
                ggml_backend_tensor_set(tensor, plain.data() + pos, offset, piece);
                pos += piece; offset += piece; size -= piece; total += piece;
            }
        }

        size_t n_bytes() override { return total; }

        // Every authenticated byte was consumed: a state with bytes after it is not one llama.cpp wrote.
        bool consumedAll() const { return next == chunks && pos == fill; }

        // Why the file did not authenticate, if it did not: llama.cpp catches what its reader
        // throws and throws its own error, so the reason is kept here too.
        std::string sealError;

    private:
        size_t available(size_t want) {
            // A loop: an empty chunk serves nothing, and the next one is due.
            while (pos == fill) load();
            return std::min(want, fill - pos);
        }

        void load() {
            try {
                if (next >= chunks) throw SealInvalid("the state continues past the file's last chunk");
                const bool last = next == chunks - 1;
                const size_t length = last ? size_t(plainBytes - uint64_t(chunks - 1) * CHUNK) : CHUNK;
                if (preadAll(params.fd, sealed.data(), LEN + length + TAG, params.headerBytes + uint64_t(next) * SEALED_CHUNK) != LEN + length + TAG) {
                    throw SealInvalid("truncated chunk");
                }
                cipher.open(sealed.data(), length, next, last, plain.data());
                fill = length;
            } catch (const SealInvalid& e) {
                sealError = e.what();
                throw;
            }
            next++;
            pos = 0;
        }

        const SealParams& params;
        ChunkCipher cipher;
        const uint32_t chunks;
        const uint64_t plainBytes;
        Scratch plain;
        Scratch sealed;
        size_t fill = 0;
        size_t pos = 0;
        size_t total = 0;
        uint32_t next = 0;
};

// llama.cpp's state reader from an unsealed file, its xxHash64 computed on the way: one pass over
// the file. llama.cpp's own loader copies every piece through a buffer, and the checksum needed a
// second read of the file. Large pieces go straight from the file into the KV cache where it is in
// host memory, in 1 MiB reads, and the hash runs on a second thread as the pieces arrive.
//
// The checksum is known only at the end: a state that does not match has been loaded by then,
// and the caller removes it from the sequence before failing (llama.cpp places it in cells it
// chose for this sequence, and checks every size against its own, as for its own loader).
class PlainReader : public llama_io_read_i {
    public:
        PlainReader(int fd, uint64_t fileBytes) : fd(fd), fileBytes(fileBytes) {
            buffers[0].resize(CHUNK);
            buffers[1].resize(CHUNK);
            // A cold file is read ahead while llama.cpp copies what came before: by prefetchStateFile's
            // thread, and by the kernel's own sequential window (doubled) where the reader gets ahead of it.
            posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        }
        PlainReader(const PlainReader&) = delete;
        PlainReader& operator=(const PlainReader&) = delete;

        void read(void* dst, size_t size) override {
            uint8_t* to = static_cast<uint8_t*>(dst);
            while (size > 0) {
                const size_t piece = available(size, AHEAD_SMALL);
                std::memcpy(to, buffers[current].data() + pos, piece);
                pos += piece; to += piece; size -= piece; total += piece;
            }
        }

        void read_tensor(ggml_tensor* tensor, size_t offset, size_t size) override {
            uint8_t* to = inPlace(tensor, offset, size);
            const size_t whole = size;
            // What is buffered first, in order; then what is left straight from the file.
            while (size > 0 && pos < fill) {
                const size_t piece = std::min(size, fill - pos);
                ggml_backend_tensor_set(tensor, buffers[current].data() + pos, offset, piece);
                pos += piece; offset += piece; size -= piece; total += piece;
            }
            if (to != nullptr) {
                to += whole - size;
                for (size_t done = 0; done < size; done += CHUNK) readFile(to + done, std::min(CHUNK, size - done));
                total += size;
                return;
            }
            while (size > 0) {
                const size_t piece = available(size, CHUNK);
                ggml_backend_tensor_set(tensor, buffers[current].data() + pos, offset, piece);
                pos += piece; offset += piece; size -= piece; total += piece;
            }
        }

        size_t n_bytes() override { return total; }

        // The whole file was read and served: a state with bytes after it is not one llama.cpp wrote.
        bool consumedAll() const { return cursor == fileBytes && pos == fill; }

        std::string xxh64() { return hasher.digest(); }

    private:
        // What a small read (a header, a size, the token list) buffers ahead: a large piece that
        // follows is read straight into its tensor, not copied out of a full buffer.
        static constexpr size_t AHEAD_SMALL = 16 << 10;

        size_t available(size_t want, size_t ahead) {
            if (pos == fill) {
                const size_t n = size_t(std::min<uint64_t>(std::max(ahead, want < CHUNK ? want : CHUNK), fileBytes - cursor));
                if (n == 0) throw std::runtime_error("the state continues past the end of the file");
                // The other buffer: the one just served may still be being hashed.
                current ^= 1;
                hasher.waitFor(pending[current]);
                pending[current] = readFile(buffers[current].data(), n);
                fill = n;
                pos = 0;
            }
            return std::min(want, fill - pos);
        }

        uint64_t readFile(uint8_t* to, size_t n) {
            if (n > fileBytes - cursor) throw std::runtime_error("the state continues past the end of the file");
            if (preadAll(fd, to, n, cursor) != n) throw std::runtime_error("the state file is shorter than its manifest says");
            cursor += n;
            return hasher.submit(to, n);
        }

        const int fd;
        const uint64_t fileBytes;
        Scratch buffers[2];
        uint64_t pending[2] = {0, 0};
        int current = 1;
        size_t fill = 0;
        size_t pos = 0;
        size_t total = 0;
        uint64_t cursor = 0;
        // Last: destroyed (its thread joined) before the buffers it reads.
        OrderedHasher hasher;
};

enum class Mode { SaveSealed, LoadSealed, SavePlain, LoadPlain };

class StateFileWorker : public Napi::AsyncWorker {
    public:
        StateFileWorker(const Napi::CallbackInfo& info, AddonContext* context, Mode mode)
            : Napi::AsyncWorker(info.Env(), "TorporSequenceStateFile"),
              context(context), mode(mode), load(mode == Mode::LoadSealed || mode == Mode::LoadPlain), deferred(Napi::Promise::Deferred::New(info.Env())) {
            // (sequenceId, params { fd, and sealed: key, prefix, fileAad, headerBytes },
            //  save: tokens | load: { plainBytes, maxTokens, and sealed: chunks | plain: xxh64 })
            sequenceId = info[0].As<Napi::Number>().Int32Value();
            Napi::Object p = info[1].As<Napi::Object>();
            params.fd = p.Get("fd").As<Napi::Number>().Int32Value();
            if (mode == Mode::SaveSealed || mode == Mode::LoadSealed) {
                params.key = bytesOf(p.Get("key"), "key", 32);
                params.prefix = bytesOf(p.Get("prefix"), "prefix", 8);
                params.fileAad = bytesOf(p.Get("fileAad"), "fileAad");
                params.headerBytes = uint64_t(p.Get("headerBytes").As<Napi::Number>().Int64Value());
            }
            if (load) {
                Napi::Object l = info[2].As<Napi::Object>();
                if (mode == Mode::LoadSealed) chunks = l.Get("chunks").As<Napi::Number>().Uint32Value();
                else expectedXxh64 = l.Get("xxh64").As<Napi::String>().Utf8Value();
                plainBytes = uint64_t(l.Get("plainBytes").As<Napi::Number>().Int64Value());
                maxTokens = l.Get("maxTokens").As<Napi::Number>().Uint32Value();
            } else {
                Napi::Uint32Array t = info[2].As<Napi::Uint32Array>();
                tokens.assign(t.Data(), t.Data() + t.ElementLength());
            }
            context->Ref();
        }
        ~StateFileWorker() { context->Unref(); }

        Napi::Promise GetPromise() { return deferred.Promise(); }

    protected:
        void Execute() override {
            try {
                if (context->disposed || context->ctx == nullptr) throw std::runtime_error("Context is disposed");
                llama_synchronize(context->ctx);
                llama_memory_t memory = llama_get_memory(context->ctx);
                if (memory == nullptr) throw std::runtime_error("the context has no memory module");
                if (load) loadState(memory);
                else saveState(memory);
            } catch (const SealInvalid& e) {
                errorCode = "TORPOR_SEAL_INVALID";
                SetError(e.what());
            } catch (const ChecksumMismatch& e) {
                errorCode = "TORPOR_CHECKSUM_MISMATCH";
                SetError(e.what());
            } catch (const std::exception& e) {
                SetError(e.what());
            } catch (...) {
                SetError("unknown error in a state file call");
            }
        }

        void OnOK() override {
            if (load) {
                Napi::Uint32Array out = Napi::Uint32Array::New(Env(), tokens.size());
                std::memcpy(out.Data(), tokens.data(), tokens.size() * sizeof(uint32_t));
                deferred.Resolve(out);
            } else if (mode == Mode::SavePlain) {
                Napi::Object out = Napi::Object::New(Env());
                out.Set("bytes", Napi::Number::New(Env(), double(plainBytes)));
                out.Set("xxh64", Napi::String::New(Env(), digest));
                deferred.Resolve(out);
            } else {
                deferred.Resolve(Napi::Number::New(Env(), double(plainBytes)));
            }
        }

        void OnError(const Napi::Error& err) override {
            Napi::Error e = Napi::Error::New(Env(), err.Message());
            if (!errorCode.empty()) e.Set("code", Napi::String::New(Env(), errorCode));
            deferred.Reject(e.Value());
        }

    private:
        void saveState(llama_memory_t memory) {
            StateFileWriter writer(params, mode == Mode::SaveSealed);
            const uint32_t header[3] = {FILE_MAGIC, FILE_VERSION, uint32_t(tokens.size())};
            writer.write(header, sizeof(header));
            writer.write(tokens.data(), tokens.size() * sizeof(uint32_t));
            try {
                memory->state_write(writer, sequenceId, 0);
                writer.finish();
            } catch (...) {
                if (!writer.writeError.empty()) throw std::runtime_error(writer.writeError);
                throw;
            }
            plainBytes = writer.n_bytes();
            if (mode == Mode::SavePlain) digest = writer.xxh64();
        }

        void loadState(llama_memory_t memory) {
            if (mode == Mode::LoadPlain) {
                PlainReader reader(params.fd, plainBytes);
                readInto(memory, reader, [&] {
                    if (!reader.consumedAll()) throw std::runtime_error("the state file has bytes after the state");
                    if (reader.xxh64() != expectedXxh64) throw ChecksumMismatch("state file xxHash64 does not match the manifest");
                }, "");
                return;
            }
            OpeningReader reader(params, chunks, plainBytes);
            readInto(memory, reader, [&] {
                if (!reader.consumedAll()) throw std::runtime_error("the state has bytes after it");
            }, reader.sealError);
        }

        // The header and tokens, then llama.cpp's state; `check` runs once it is read. Whatever
        // llama.cpp took of a refused state is not this sequence's any more.
        template <typename Reader, typename Check>
        void readInto(llama_memory_t memory, Reader& reader, Check check, const std::string& sealError) {
            uint32_t header[3];
            reader.read(header, sizeof(header));
            if (header[0] != FILE_MAGIC || header[1] != FILE_VERSION) throw std::runtime_error("not a llama.cpp sequence state of this version");
            if (header[2] > maxTokens) throw std::runtime_error("the state holds " + std::to_string(header[2]) + " tokens, more than the context's " + std::to_string(maxTokens));
            tokens.resize(header[2]);
            reader.read(tokens.data(), tokens.size() * sizeof(uint32_t));
            try {
                memory->state_read(reader, sequenceId, 0);
                check();
            } catch (...) {
                llama_memory_seq_rm(memory, sequenceId, -1, -1);
                if (!sealError.empty()) throw SealInvalid(sealError);
                throw;
            }
        }

        AddonContext* context;
        Mode mode;
        bool load;
        Napi::Promise::Deferred deferred;
        std::string digest;
        llama_seq_id sequenceId = 0;
        SealParams params;
        std::vector<uint32_t> tokens;
        uint32_t chunks = 0;
        uint64_t plainBytes = 0;
        uint32_t maxTokens = 0;
        std::string expectedXxh64;
        std::string errorCode;
};

Napi::Value queue(const Napi::CallbackInfo& info, AddonContext* context, Mode mode) {
    if (context->disposed) {
        Napi::Error::New(info.Env(), "Context is disposed").ThrowAsJavaScriptException();
        return info.Env().Undefined();
    }
    StateFileWorker* worker;
    try {
        worker = new StateFileWorker(info, context, mode);
    } catch (const std::exception& e) {
        Napi::TypeError::New(info.Env(), e.what()).ThrowAsJavaScriptException();
        return info.Env().Undefined();
    }
    worker->Queue();
    return worker->GetPromise();
}

// Whether the file's first `length` bytes look to be in the page cache already (a rehydrate right
// after a hibernate, or a second try): 16 pages spread over them, each read only if it is there
// (RWF_NOWAIT). Then a prefetch would only compete with the allocation and the load for the CPU:
// 23 ms of a 175 ms rehydrate of a cached 484 MiB state here. A kernel or file system that cannot
// tell says no, and the prefetch runs as before.
bool inPageCache(int fd, uint64_t length) {
#if defined(__linux__) && defined(RWF_NOWAIT)
    if (length == 0) return true;
    alignas(64) uint8_t page[4096];
    constexpr uint64_t PROBES = 16;
    for (uint64_t i = 0; i < PROBES; i++) {
        const uint64_t at = (length - 1) / (PROBES - 1) * i;
        iovec io{page, size_t(std::min<uint64_t>(sizeof(page), length - at))};
        if (preadv2(fd, &io, 1, off_t(at), RWF_NOWAIT) <= 0) return false;
    }
    return true;
#else
    (void)fd; (void)length;
    return false;
#endif
}

// Reads a file's first `length` bytes into the page cache, in order, without copying them anywhere:
// sendfile(2) to /dev/null reads through the kernel's own readahead, in large folios, as `dd`'s
// reads do, and hands nothing to user space. Not readahead(2) or WILLNEED: those fill the cache a
// 4 KiB page at a time, and a reader behind them went at 0.55-0.65x of `dd` (546 MiB, cold, 5
// rounds interleaved: 188-221 ms against 105-204). Faulting file mappings in (MADV_POPULATE_READ)
// was as fast, but maps and unmaps the file in the process's address space beside the threads
// that decode. Where sendfile cannot (a file system without splice), readahead(2) as before.
void populatePageCache(int fd, uint64_t length) {
#if defined(__linux__)
    if (inPageCache(fd, length)) return;
    const int sink = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (sink >= 0) {
        constexpr uint64_t PIECE = 16u << 20;
        off_t at = 0;
        ssize_t n = 1;
        while (uint64_t(at) < length && n > 0) n = sendfile(sink, fd, &at, size_t(std::min<uint64_t>(PIECE, length - uint64_t(at))));
        const int why = errno;
        close(sink);
        // Done, or at the end of a file shorter than asked for, or a failure readahead would share.
        if (n >= 0 || (why != EINVAL && why != ENOSYS)) return;
        readahead(fd, at, size_t(length - uint64_t(at)));
        return;
    }
#endif
    readahead(fd, 0, size_t(length));
}

}  // namespace

// prefetchStateFile(fd, bytes): the disk starts reading the file's first `bytes` into the page
// cache on a thread of its own, and this returns at once. Called as a rehydrate opens an unsealed
// state, before its context is allocated: the reads then run beside the allocation, and the load
// finds what they fetched. The thread reads through a duplicate of the descriptor, so the caller
// may close its own whenever it likes; a failure is only a hint not taken.
Napi::Value AddonContext::PrefetchStateFile(const Napi::CallbackInfo& info) {
    if (!info[0].IsNumber() || !info[1].IsNumber()) {
        Napi::TypeError::New(info.Env(), "prefetchStateFile(fd, bytes) takes two numbers").ThrowAsJavaScriptException();
        return info.Env().Undefined();
    }
    const int fd = info[0].As<Napi::Number>().Int32Value();
    const double bytes = info[1].As<Napi::Number>().DoubleValue();
    if (fd < 0 || !(bytes >= 0)) {
        Napi::RangeError::New(info.Env(), "prefetchStateFile: fd and bytes must not be negative").ThrowAsJavaScriptException();
        return info.Env().Undefined();
    }
    const int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) return Napi::Boolean::New(info.Env(), false);
    try {
        std::thread([copy, length = uint64_t(bytes)] {
            populatePageCache(copy, length);
            close(copy);
        }).detach();
    } catch (const std::exception&) {
        close(copy);
        return Napi::Boolean::New(info.Env(), false);
    }
    return Napi::Boolean::New(info.Env(), true);
}

Napi::Value AddonContext::SaveSequenceStateSealed(const Napi::CallbackInfo& info) {
    return queue(info, this, Mode::SaveSealed);
}

Napi::Value AddonContext::LoadSequenceStateSealed(const Napi::CallbackInfo& info) {
    return queue(info, this, Mode::LoadSealed);
}

Napi::Value AddonContext::SaveSequenceStatePlain(const Napi::CallbackInfo& info) {
    return queue(info, this, Mode::SavePlain);
}

Napi::Value AddonContext::LoadSequenceStatePlain(const Napi::CallbackInfo& info) {
    return queue(info, this, Mode::LoadPlain);
}
