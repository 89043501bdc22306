// A FIX 4.4 initiator on QuickFIX/C++, the independent counterparty of the understudy FIX
// gateway tests. Usage: qf_initiator SETTINGS_FILE
//
// The settings file (written by the test) names both gateway addresses (SocketConnectHost /
// SocketConnectHost1) and a FileStorePath, so sequence numbers survive a restart of this
// program. Commands on stdin, one per line:
//   order CLORDID SYMBOL QTY market|limit   send a NewOrderSingle
//   burst PREFIX N INTERVAL_MS              send N market orders PREFIX0..PREFIX{N-1}
//   quit                                    log out and exit
// Every line on stdout is one event, `KIND key=value ...`:
//   LOGON next_sender=N next_target=N       the session is logged on
//   LOGOUT                                  the session logged out or was disconnected
//   SEND_ADMIN type=T seq=N reset=Y|N ...   an admin message we send (Logon, ResendRequest…)
//   RECV_ADMIN type=T seq=N reset=Y|N ...   an admin message we received
//   SEND_APP type=T seq=N cl=ID possdup=Y|N an application message we send (or resend)
//   EXEC cl=ID exec=ID type=T status=S possdup=Y|N possresend=Y|N seq=N
//                                           an ExecutionReport received
//   SENT cl=ID / ERROR text / READY / BYE
// With `SSLProtocol` in the settings' [DEFAULT] section it connects over TLS (QuickFIX's
// SSLSocketInitiator: CertificationAuthoritiesFile, ClientCertificateFile, ...), when built with
// -DHAVE_SSL=1 and -lssl -lcrypto; a build without them says so on stderr and exits 3.
// Build: g++ -std=gnu++14 -O1 qf_initiator.cpp -lquickfix -lpthread -o qf_initiator

#include <quickfix/Application.h>
#include <quickfix/FileLog.h>
#include <quickfix/FileStore.h>
#include <quickfix/Session.h>
#include <quickfix/SessionSettings.h>
#include <quickfix/SocketInitiator.h>
#if defined(HAVE_SSL) && HAVE_SSL > 0
#include <quickfix/SSLSocketInitiator.h>
#endif
#include <quickfix/fix44/NewOrderSingle.h>

#include <chrono>
#include <memory>
#include <iostream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

namespace {

std::mutex out_mutex;

void emit(const std::string& line) {
  std::lock_guard<std::mutex> lock(out_mutex);
  std::cout << line << std::endl;  // endl flushes: the test reads line by line
}

std::string header_field(const FIX::Message& m, int tag, const char* dflt = "") {
  return m.getHeader().isSetField(tag) ? m.getHeader().getField(tag) : std::string(dflt);
}

std::string body_field(const FIX::Message& m, int tag, const char* dflt = "") {
  return m.isSetField(tag) ? m.getField(tag) : std::string(dflt);
}

std::string describe(const FIX::Message& m) {
  std::ostringstream s;
  s << "type=" << header_field(m, FIX::FIELD::MsgType)
    << " seq=" << header_field(m, FIX::FIELD::MsgSeqNum)
    << " reset=" << body_field(m, FIX::FIELD::ResetSeqNumFlag, "N")
    << " possdup=" << header_field(m, FIX::FIELD::PossDupFlag, "N");
  const std::string t = header_field(m, FIX::FIELD::MsgType);
  if (t == "2") {
    s << " begin=" << body_field(m, FIX::FIELD::BeginSeqNo)
      << " end=" << body_field(m, FIX::FIELD::EndSeqNo);
  } else if (t == "4") {
    s << " gapfill=" << body_field(m, FIX::FIELD::GapFillFlag, "N")
      << " new=" << body_field(m, FIX::FIELD::NewSeqNo);
  } else if (t == "3" || t == "5") {
    s << " text=\"" << body_field(m, FIX::FIELD::Text) << "\"";
  }
  return s.str();
}

class App : public FIX::Application {
 public:
  void onCreate(const FIX::SessionID& id) override { session = id; }

  void onLogon(const FIX::SessionID& id) override {
    FIX::Session* s = FIX::Session::lookupSession(id);
    std::ostringstream o;
    o << "LOGON next_sender=" << (s ? s->getExpectedSenderNum() : 0)
      << " next_target=" << (s ? s->getExpectedTargetNum() : 0);
    emit(o.str());
  }

  void onLogout(const FIX::SessionID&) override { emit("LOGOUT"); }

  void toAdmin(FIX::Message& m, const FIX::SessionID&) override {
    emit("SEND_ADMIN " + describe(m));
  }

  void toApp(FIX::Message& m, const FIX::SessionID&) throw(FIX::DoNotSend) override {
    emit("SEND_APP type=" + header_field(m, FIX::FIELD::MsgType) +
         " seq=" + header_field(m, FIX::FIELD::MsgSeqNum) +
         " cl=" + body_field(m, FIX::FIELD::ClOrdID) +
         " possdup=" + header_field(m, FIX::FIELD::PossDupFlag, "N"));
  }

  void fromAdmin(const FIX::Message& m, const FIX::SessionID&) throw(
      FIX::FieldNotFound, FIX::IncorrectDataFormat, FIX::IncorrectTagValue,
      FIX::RejectLogon) override {
    emit("RECV_ADMIN " + describe(m));
  }

  void fromApp(const FIX::Message& m, const FIX::SessionID&) throw(
      FIX::FieldNotFound, FIX::IncorrectDataFormat, FIX::IncorrectTagValue,
      FIX::UnsupportedMessageType) override {
    const std::string t = header_field(m, FIX::FIELD::MsgType);
    if (t == "8") {
      emit("EXEC cl=" + body_field(m, FIX::FIELD::ClOrdID) +
           " exec=" + body_field(m, FIX::FIELD::ExecID) +
           " type=" + body_field(m, FIX::FIELD::ExecType) +
           " status=" + body_field(m, FIX::FIELD::OrdStatus) +
           " possdup=" + header_field(m, FIX::FIELD::PossDupFlag, "N") +
           " possresend=" + header_field(m, FIX::FIELD::PossResend, "N") +
           " seq=" + header_field(m, FIX::FIELD::MsgSeqNum));
    } else {
      emit("RECV_APP type=" + t + " seq=" + header_field(m, FIX::FIELD::MsgSeqNum) +
           " possdup=" + header_field(m, FIX::FIELD::PossDupFlag, "N"));
    }
  }

  FIX::SessionID session;
};

void send_order(const FIX::SessionID& id, const std::string& cl, const std::string& symbol,
                double qty, bool market) {
  FIX44::NewOrderSingle o(FIX::ClOrdID(cl), FIX::Side(FIX::Side_BUY), FIX::TransactTime(),
                          FIX::OrdType(market ? FIX::OrdType_MARKET : FIX::OrdType_LIMIT));
  o.set(FIX::HandlInst('1'));
  o.set(FIX::Symbol(symbol));
  o.set(FIX::OrderQty(qty));
  if (!market) o.set(FIX::Price(10.5));
  try {
    // Stored and sequenced even while not logged on: it is then resent after the next
    // Logon, as FIX requires.
    FIX::Session::sendToTarget(o, id);
    emit("SENT cl=" + cl);
  } catch (std::exception& e) {
    emit(std::string("ERROR ") + e.what());
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: qf_initiator SETTINGS_FILE" << std::endl;
    return 2;
  }
  try {
    FIX::SessionSettings settings(argv[1]);
    App app;
    FIX::FileStoreFactory store(settings);
    FIX::FileLogFactory log(settings);
    std::unique_ptr<FIX::Initiator> initiator;
    if (settings.get().has(FIX::SSL_PROTOCOL)) {
#if defined(HAVE_SSL) && HAVE_SSL > 0
      initiator.reset(new FIX::SSLSocketInitiator(app, store, settings, log));
#else
      std::cerr << "qf_initiator: built without SSL (HAVE_SSL)" << std::endl;
      return 3;
#endif
    } else {
      initiator.reset(new FIX::SocketInitiator(app, store, settings, log));
    }
    initiator->start();
    emit("READY");
    std::string line;
    while (std::getline(std::cin, line)) {
      std::istringstream in(line);
      std::string cmd;
      in >> cmd;
      if (cmd == "order") {
        std::string cl, symbol, kind;
        double qty = 0;
        in >> cl >> symbol >> qty >> kind;
        send_order(app.session, cl, symbol, qty, kind == "market");
      } else if (cmd == "burst") {
        std::string prefix;
        int n = 0, interval = 0;
        in >> prefix >> n >> interval;
        for (int i = 0; i < n; ++i) {
          send_order(app.session, prefix + std::to_string(i), "QFX", 10, true);
          if (interval > 0) std::this_thread::sleep_for(std::chrono::milliseconds(interval));
        }
      } else if (cmd == "quit") {
        break;
      } else if (!cmd.empty()) {
        emit("ERROR unknown command " + cmd);
      }
    }
    initiator->stop();  // sends Logout, waits for the answer (bounded by LogoutTimeout)
    emit("BYE");
    return 0;
  } catch (std::exception& e) {
    std::cerr << "qf_initiator: " << e.what() << std::endl;
    return 1;
  }
}
