// An order relay on QuickFIX/C++, shaped like understudy's fix-gateway, for the like-for-like
// row of the round-trip benchmark (`understudy bench fix-roundtrip`): the same two FIX hops,
// client → relay → exchange → back, written the way a QuickFIX shop writes one.
// Usage: qf_relay SETTINGS_FILE
//
// SETTINGS_FILE holds acceptor sessions (one per client, SenderCompID=QFR) and one initiator
// session, the upstream exchange. A NewOrderSingle from a client goes upstream under ClOrdID
// CLIENT~ClOrdID (as the gateway's does); an ExecutionReport from upstream goes back to the
// client its ClOrdID names, under the client's own ClOrdID. Both sides use QuickFIX's FileStore
// as shipped: every message written and fflush()ed, never fsynced.
// Prints READY once the upstream session is logged on; exits on EOF of stdin.
// Build: g++ -std=gnu++14 -O2 qf_relay.cpp -lquickfix -lpthread -o qf_relay

#include <quickfix/Application.h>
#include <quickfix/FileStore.h>
#include <quickfix/Log.h>
#include <quickfix/Session.h>
#include <quickfix/SessionSettings.h>
#include <quickfix/ThreadedSocketAcceptor.h>
#include <quickfix/ThreadedSocketInitiator.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <string>
#include <thread>

namespace {

const char SEP = '~';

class Relay : public FIX::Application {
 public:
  void onCreate(const FIX::SessionID& id) override {
    if (id.getTargetCompID().getString() == "EXCH") upstream_ = id;
  }
  void onLogon(const FIX::SessionID& id) override {
    if (id == upstream_) up_ = true;
  }
  void onLogout(const FIX::SessionID& id) override {
    if (id == upstream_) up_ = false;
  }
  void toAdmin(FIX::Message&, const FIX::SessionID&) override {}
  void toApp(FIX::Message&, const FIX::SessionID&) throw(FIX::DoNotSend) override {}
  void fromAdmin(const FIX::Message&, const FIX::SessionID&) throw(
      FIX::FieldNotFound, FIX::IncorrectDataFormat, FIX::IncorrectTagValue,
      FIX::RejectLogon) override {}

  // Runs on the thread of the session the message came on; QuickFIX locks each session on
  // send, so a client's thread may send upstream and the upstream's thread to a client.
  void fromApp(const FIX::Message& m, const FIX::SessionID& id) throw(
      FIX::FieldNotFound, FIX::IncorrectDataFormat, FIX::IncorrectTagValue,
      FIX::UnsupportedMessageType) override {
    FIX::MsgType type;
    m.getHeader().getField(type);
    if (id == upstream_) {
      if (type.getValue() != FIX::MsgType_ExecutionReport) return;
      const std::string routed = m.getField(FIX::FIELD::ClOrdID);
      const std::string::size_type at = routed.find(SEP);
      if (at == std::string::npos) return;
      FIX::Message out(m);
      strip(out);
      out.setField(FIX::ClOrdID(routed.substr(at + 1)));
      FIX::Session::sendToTarget(
          out, FIX::SessionID(id.getBeginString(), id.getSenderCompID(),
                              FIX::TargetCompID(routed.substr(0, at))));
      return;
    }
    if (type.getValue() != FIX::MsgType_NewOrderSingle) {
      throw FIX::UnsupportedMessageType();
    }
    FIX::Message out(m);
    strip(out);
    out.setField(FIX::ClOrdID(id.getTargetCompID().getString() + SEP +
                              m.getField(FIX::FIELD::ClOrdID)));
    FIX::Session::sendToTarget(out, upstream_);
  }

  bool up() const { return up_; }

 private:
  // What the session layer sets again, or what belongs to the hop the message came on.
  static void strip(FIX::Message& m) {
    FIX::Header& h = m.getHeader();
    for (int tag : {FIX::FIELD::PossDupFlag, FIX::FIELD::PossResend, FIX::FIELD::OrigSendingTime,
                    FIX::FIELD::OnBehalfOfCompID, FIX::FIELD::DeliverToCompID}) {
      h.removeField(tag);
    }
  }

  FIX::SessionID upstream_;
  std::atomic<bool> up_{false};
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: qf_relay SETTINGS_FILE" << std::endl;
    return 2;
  }
  try {
    FIX::SessionSettings settings(argv[1]);
    Relay app;
    FIX::FileStoreFactory store(settings);
    FIX::ScreenLogFactory log(false, false, false);
    // A thread per session, as for qf_acceptor: QuickFIX's faster choice here (p50 135-166 us
    // against 155-172 us with SocketAcceptor and SocketInitiator, 2 December).
    FIX::ThreadedSocketAcceptor acceptor(app, store, settings, log);
    FIX::ThreadedSocketInitiator initiator(app, store, settings, log);
    acceptor.start();
    initiator.start();
    for (int i = 0; i < 1000 && !app.up(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!app.up()) {
      std::cerr << "qf_relay: the upstream session did not log on within 10 s" << std::endl;
      return 1;
    }
    std::cout << "READY" << std::endl;
    std::string line;
    while (std::getline(std::cin, line)) {
    }
    initiator.stop();
    acceptor.stop();
    return 0;
  } catch (std::exception& e) {
    std::cerr << "qf_relay: " << e.what() << std::endl;
    return 1;
  }
}
