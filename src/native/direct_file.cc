// direct_file.cc — positioned reads of a file around the page cache (O_DIRECT), on libuv's pool,
// each timed: the disk tier's link. Through the page cache a store file read once would stay in
// memory (the RSS the host budget is meant to bound would not count it, and a second read would
// measure memory, not the disk); direct reads move exactly the bytes asked for, every time.
//
// O_DIRECT wants the offset, the length and the buffer aligned to the device's logical block;
// 4096 covers every device in use, and the store lays its experts out on 4096-byte boundaries.
// A file system that refuses O_DIRECT (tmpfs, some overlays) is opened plainly and each range is
// dropped from the page cache after its read (posix_fadvise DONTNEED): `direct` says which.
//
// JS: directOpen(path) → { handle, direct }; directRead(handle, offset, length) → Promise<{ bytes,
// seconds }> (bytes: a Buffer over the aligned memory read into, shorter than length where the file
// ends first); directClose(handle). A read in
// flight keeps the descriptor open until it is done, so closing never lets a read hit a reused one.
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "napi_util.h"

namespace eb {
namespace {

constexpr uint64_t kAlign = 4096;

struct OpenFile {
  int fd = -1;
  bool direct = false;
  std::string path;
  std::atomic<bool> closed{false};
  ~OpenFile() {
    if (fd >= 0) ::close(fd);
  }
};

// What a JS handle holds: the file while it is open (reads in flight hold their own reference).
struct Handle {
  std::shared_ptr<OpenFile> file;
};

std::string errno_text(int e) { return std::string(strerror(e)); }

Handle* handle_of(const Napi::Value& v) {
  if (!v.IsExternal()) throw Napi::TypeError::New(v.Env(), "expected a handle from directOpen");
  return v.As<Napi::External<Handle>>().Data();
}

Napi::Value DirectOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "path must be a string");
  auto f = std::make_shared<OpenFile>();
  f->path = info[0].As<Napi::String>().Utf8Value();
  f->fd = ::open(f->path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  f->direct = f->fd >= 0;
  if (f->fd < 0 && errno == EINVAL) f->fd = ::open(f->path.c_str(), O_RDONLY | O_CLOEXEC);  // no O_DIRECT here
  if (f->fd < 0) {
    Napi::Error e = Napi::Error::New(env, "cannot open " + f->path + ": " + errno_text(errno));
    e.Value().Set("code", Napi::String::New(env, errno == ENOENT ? "ENOENT" : "EIO"));
    throw e;
  }
  auto* h = new Handle{f};
  Napi::Object o = Napi::Object::New(env);
  o.Set("handle", Napi::External<Handle>::New(env, h, [](Napi::Env, Handle* p) { delete p; }));
  o.Set("direct", Napi::Boolean::New(env, f->direct));
  return o;
}

class ReadWorker : public Napi::AsyncWorker {
 public:
  ReadWorker(Napi::Env env, std::shared_ptr<OpenFile> f, uint64_t offset, uint64_t length)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), f_(std::move(f)), offset_(offset), length_(length) {}
  ~ReadWorker() override { free(buf_); }
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    if (posix_memalign(&buf_, kAlign, length_ ? length_ : kAlign) != 0) {
      buf_ = nullptr;
      return SetError("cannot allocate " + std::to_string(length_) + " aligned bytes");
    }
    auto t0 = std::chrono::steady_clock::now();
    uint64_t done = 0;
    while (done < length_) {
      ssize_t n = ::pread(f_->fd, static_cast<uint8_t*>(buf_) + done, length_ - done, (off_t)(offset_ + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return SetError("read of " + f_->path + " at byte " + std::to_string(offset_ + done) + " failed: " + errno_text(errno));
      if (n == 0) break;  // the end of the file: the caller sees how many bytes there were
      done += (uint64_t)n;
    }
    read_ = done;
    seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!f_->direct) posix_fadvise(f_->fd, (off_t)offset_, (off_t)length_, POSIX_FADV_DONTNEED);
  }
  void OnOK() override {
    Napi::Env env = Env();
    void* p = buf_;
    buf_ = nullptr;  // the Buffer owns it now
    auto bytes = Napi::Buffer<uint8_t>::New(env, static_cast<uint8_t*>(p), read_, [](Napi::Env, uint8_t* d) { free(d); });
    Napi::Object o = Napi::Object::New(env);
    o.Set("bytes", bytes);
    o.Set("seconds", Napi::Number::New(env, seconds_));
    deferred_.Resolve(o);
  }
  void OnError(const Napi::Error& e) override {
    e.Value().Set("code", Napi::String::New(Env(), "EIO"));
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<OpenFile> f_;
  uint64_t offset_, length_, read_ = 0;
  void* buf_ = nullptr;
  double seconds_ = 0;
};

uint64_t whole_of(const Napi::Value& v, const char* what) {
  double x = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(x >= 0 && x <= 9007199254740991.0 && x == (double)(uint64_t)x))
    throw Napi::RangeError::New(v.Env(), std::string(what) + " must be a whole number of bytes ≥ 0");
  return (uint64_t)x;
}

Napi::Value DirectRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto d = Napi::Promise::Deferred::New(env);
  try {
    Handle* h = handle_of(info[0]);
    uint64_t offset = whole_of(info[1], "offset"), length = whole_of(info[2], "length");
    if (!h->file || h->file->closed) throw Napi::Error::New(env, "read of a closed file");
    if (offset % kAlign || length % kAlign)
      throw Napi::RangeError::New(env, "a direct read's offset and length must be multiples of 4096, got " + std::to_string(offset) +
                                           " and " + std::to_string(length));
    auto* w = new ReadWorker(env, h->file, offset, length);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  } catch (const Napi::Error& e) {
    d.Reject(e.Value());
    return d.Promise();
  }
}

Napi::Value DirectClose(const Napi::CallbackInfo& info) {
  Handle* h = handle_of(info[0]);
  if (h->file) {
    h->file->closed = true;
    h->file.reset();  // the descriptor closes when the last read in flight lets go of it
  }
  return info.Env().Undefined();
}

}  // namespace

void register_direct_file(Napi::Env env, Napi::Object exports) {
  exports.Set("directOpen", Napi::Function::New(env, DirectOpen));
  exports.Set("directRead", Napi::Function::New(env, DirectRead));
  exports.Set("directClose", Napi::Function::New(env, DirectClose));
}

}  // namespace eb
