// A FIX 4.4 acceptor on QuickFIX/C++ doing the work of understudy's fix-exchange-sim, for the
// side-by-side round-trip benchmark (`understudy bench fix-roundtrip`).
// Usage: qf_acceptor SETTINGS_FILE
//
// NewOrderSingle → ExecutionReport New (150=0, 39=0); a market order (40=1) then fills, in two
// executions when its quantity allows (floor(qty/2), then the rest: 150=F, 39=1 then 39=2).
// Other orders rest. Prints READY once listening; exits on EOF of stdin.
// Usage: qf_acceptor SETTINGS_FILE [STORE]; STORE chooses the message store:
//   file        QuickFIX's FileStore as shipped (FileStorePath): every message and sequence
//               number written and fflush()ed, never fsynced — survives a crash of this
//               process, not necessarily of the machine. The default.
//   file-fsync  the same FileStore, and after each store write the files it touched are
//               fdatasync()ed before the call returns (so before the message is sent).
//               QuickFIX/C++ 1.15 has no setting for this (QuickFIX/J's FileStoreSync has no
//               C++ counterpart), so a wrapper store does it.
//   memory      QuickFIX's MemoryStore: nothing survives the process.
// Build: g++ -std=gnu++14 -O2 qf_acceptor.cpp -lquickfix -lpthread -o qf_acceptor

#include <quickfix/Application.h>
#include <quickfix/FileStore.h>
#include <quickfix/Log.h>
#include <quickfix/MessageCracker.h>
#include <quickfix/Session.h>
#include <quickfix/SessionSettings.h>
#include <quickfix/ThreadedSocketAcceptor.h>
#include <quickfix/fix44/ExecutionReport.h>
#include <quickfix/fix44/NewOrderSingle.h>

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>

namespace {

// FileStore with every write made durable: FileStore keeps its FILE*s private, so this opens
// the same files by name; fdatasync on any descriptor of a file flushes that file's data.
class SyncedFileStore : public FIX::MessageStore {
 public:
  SyncedFileStore(const std::string& path, const FIX::SessionID& s)
      : inner_(path, s),
        prefix_(path + "/" + s.getBeginString().getString() + "-" +
                s.getSenderCompID().getString() + "-" + s.getTargetCompID().getString() +
                ".") {
    reopen();
  }
  ~SyncedFileStore() override { close_all(); }

  bool set(int seq, const std::string& msg) throw(FIX::IOException) override {
    const bool ok = inner_.set(seq, msg);
    sync(body_);
    sync(header_);
    return ok;
  }
  void get(int b, int e, std::vector<std::string>& out) const throw(FIX::IOException) override {
    inner_.get(b, e, out);
  }
  int getNextSenderMsgSeqNum() const throw(FIX::IOException) override {
    return inner_.getNextSenderMsgSeqNum();
  }
  int getNextTargetMsgSeqNum() const throw(FIX::IOException) override {
    return inner_.getNextTargetMsgSeqNum();
  }
  void setNextSenderMsgSeqNum(int v) throw(FIX::IOException) override {
    inner_.setNextSenderMsgSeqNum(v);
    sync(seqnums_);
  }
  void setNextTargetMsgSeqNum(int v) throw(FIX::IOException) override {
    inner_.setNextTargetMsgSeqNum(v);
    sync(seqnums_);
  }
  void incrNextSenderMsgSeqNum() throw(FIX::IOException) override {
    inner_.incrNextSenderMsgSeqNum();
    sync(seqnums_);
  }
  void incrNextTargetMsgSeqNum() throw(FIX::IOException) override {
    inner_.incrNextTargetMsgSeqNum();
    sync(seqnums_);
  }
  FIX::UtcTimeStamp getCreationTime() const throw(FIX::IOException) override {
    return inner_.getCreationTime();
  }
  // reset and refresh recreate or reopen the files: our descriptors must follow.
  void reset() throw(FIX::IOException) override {
    inner_.reset();
    reopen();
    sync(body_);
    sync(header_);
    sync(seqnums_);
    sync(session_);
  }
  void refresh() throw(FIX::IOException) override {
    inner_.refresh();
    reopen();
  }

 private:
  void close_all() {
    for (int* fd : {&body_, &header_, &seqnums_, &session_}) {
      if (*fd >= 0) ::close(*fd);
      *fd = -1;
    }
  }
  void reopen() {
    close_all();
    body_ = open_one("body");
    header_ = open_one("header");
    seqnums_ = open_one("seqnums");
    session_ = open_one("session");
  }
  int open_one(const char* suffix) {
    const std::string name = prefix_ + suffix;
    const int fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw FIX::IOException("cannot open " + name + ": " + std::strerror(errno));
    return fd;
  }
  static void sync(int fd) {
    if (::fdatasync(fd) != 0) throw FIX::IOException(std::string("fdatasync: ") + std::strerror(errno));
  }

  FIX::FileStore inner_;
  std::string prefix_;
  int body_ = -1, header_ = -1, seqnums_ = -1, session_ = -1;
};

class SyncedFileStoreFactory : public FIX::MessageStoreFactory {
 public:
  explicit SyncedFileStoreFactory(const FIX::SessionSettings& settings) : settings_(settings) {}
  FIX::MessageStore* create(const FIX::SessionID& s) override {
    const std::string path = settings_.get(s).getString(FIX::FILE_STORE_PATH);
    return new SyncedFileStore(path, s);
  }
  void destroy(FIX::MessageStore* store) override { delete store; }

 private:
  FIX::SessionSettings settings_;
};

class App : public FIX::Application, public FIX::MessageCracker {
 public:
  void onCreate(const FIX::SessionID&) override {}
  void onLogon(const FIX::SessionID&) override {}
  void onLogout(const FIX::SessionID&) override {}
  void toAdmin(FIX::Message&, const FIX::SessionID&) override {}
  void toApp(FIX::Message&, const FIX::SessionID&) throw(FIX::DoNotSend) override {}
  void fromAdmin(const FIX::Message&, const FIX::SessionID&) throw(
      FIX::FieldNotFound, FIX::IncorrectDataFormat, FIX::IncorrectTagValue,
      FIX::RejectLogon) override {}
  void fromApp(const FIX::Message& m, const FIX::SessionID& id) throw(
      FIX::FieldNotFound, FIX::IncorrectDataFormat, FIX::IncorrectTagValue,
      FIX::UnsupportedMessageType) override {
    crack(m, id);
  }

  void onMessage(const FIX44::NewOrderSingle& o, const FIX::SessionID& id) override {
    FIX::ClOrdID cl;
    FIX::Symbol symbol;
    FIX::Side side;
    FIX::OrderQty qty;
    FIX::OrdType type;
    o.get(cl);
    o.get(symbol);
    o.get(side);
    o.get(qty);
    o.get(type);
    const std::string order_id = "O" + std::to_string(next_order.fetch_add(1));
    report(id, order_id, cl, symbol, side, qty, FIX::ExecType_NEW, FIX::OrdStatus_NEW, 0, 0);
    if (type.getValue() != FIX::OrdType_MARKET) return;
    const double half = std::floor(qty.getValue() / 2.0);
    if (half >= 1.0) {
      report(id, order_id, cl, symbol, side, qty, FIX::ExecType_TRADE,
             FIX::OrdStatus_PARTIALLY_FILLED, half, half);
    }
    report(id, order_id, cl, symbol, side, qty, FIX::ExecType_TRADE, FIX::OrdStatus_FILLED,
           qty.getValue() - (half >= 1.0 ? half : 0), qty.getValue());
  }

 private:
  void report(const FIX::SessionID& id, const std::string& order_id, const FIX::ClOrdID& cl,
              const FIX::Symbol& symbol, const FIX::Side& side, const FIX::OrderQty& qty,
              char exec_type, char status, double last, double cum) {
    FIX44::ExecutionReport r(FIX::OrderID(order_id), FIX::ExecID("E" + std::to_string(next_exec.fetch_add(1))),
                             FIX::ExecType(exec_type), FIX::OrdStatus(status), side,
                             FIX::LeavesQty(status == FIX::OrdStatus_FILLED ? 0 : qty.getValue() - cum),
                             FIX::CumQty(cum), FIX::AvgPx(cum > 0 ? price : 0));
    r.set(cl);
    r.set(symbol);
    r.set(qty);
    r.set(FIX::LastQty(last));
    r.set(FIX::LastPx(last > 0 ? price : 0));
    r.set(FIX::TransactTime());
    FIX::Session::sendToTarget(r, id);
  }

  // Atomic: with a thread per session, sessions answer their orders at the same time.
  std::atomic<unsigned long> next_order{1};
  std::atomic<unsigned long> next_exec{1};
  const double price = 100.0;
};

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc == 3 ? argv[2] : "file";
  if ((argc != 2 && argc != 3) || (mode != "file" && mode != "file-fsync" && mode != "memory")) {
    std::cerr << "usage: qf_acceptor SETTINGS_FILE [file|file-fsync|memory]" << std::endl;
    return 2;
  }
  try {
    FIX::SessionSettings settings(argv[1]);
    App app;
    std::unique_ptr<FIX::MessageStoreFactory> store;
    if (mode == "memory") {
      store.reset(new FIX::MemoryStoreFactory());
    } else if (mode == "file-fsync") {
      store.reset(new SyncedFileStoreFactory(settings));
    } else {
      store.reset(new FIX::FileStoreFactory(settings));
    }
    FIX::ScreenLogFactory log(false, false, false);
    // A thread per session, blocking on its socket: what QuickFIX users pick for latency.
    // Measured here (bench fix-roundtrip, 2 December): p50 53-69 us on its MemoryStore against
    // 86-91 us with the single-threaded SocketAcceptor, and no less throughput.
    FIX::ThreadedSocketAcceptor acceptor(app, *store, settings, log);
    acceptor.start();
    std::cout << "READY" << std::endl;
    std::string line;
    while (std::getline(std::cin, line)) {
    }
    acceptor.stop();
    return 0;
  } catch (std::exception& e) {
    std::cerr << "qf_acceptor: " << e.what() << std::endl;
    return 1;
  }
}
