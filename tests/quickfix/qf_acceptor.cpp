// A FIX 4.4 acceptor on QuickFIX/C++ doing the work of understudy's fix-exchange-sim, for the
// side-by-side round-trip benchmark (`understudy bench fix-roundtrip`).
// Usage: qf_acceptor SETTINGS_FILE
//
// NewOrderSingle → ExecutionReport New (150=0, 39=0); a market order (40=1) then fills, in two
// executions when its quantity allows (floor(qty/2), then the rest: 150=F, 39=1 then 39=2).
// Other orders rest. Messages are persisted by the store the settings name (FileStorePath →
// QuickFIX's FileStore: every message written and flushed, not fsynced).
// Prints READY once listening; exits on EOF of stdin.
// Build: g++ -std=gnu++14 -O2 qf_acceptor.cpp -lquickfix -lpthread -o qf_acceptor

#include <quickfix/Application.h>
#include <quickfix/FileStore.h>
#include <quickfix/Log.h>
#include <quickfix/MessageCracker.h>
#include <quickfix/Session.h>
#include <quickfix/SessionSettings.h>
#include <quickfix/SocketAcceptor.h>
#include <quickfix/fix44/ExecutionReport.h>
#include <quickfix/fix44/NewOrderSingle.h>

#include <cmath>
#include <iostream>
#include <string>

namespace {

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
    const std::string order_id = "O" + std::to_string(next_order++);
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
    FIX44::ExecutionReport r(FIX::OrderID(order_id), FIX::ExecID("E" + std::to_string(next_exec++)),
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

  unsigned long next_order = 1;
  unsigned long next_exec = 1;
  const double price = 100.0;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: qf_acceptor SETTINGS_FILE" << std::endl;
    return 2;
  }
  try {
    FIX::SessionSettings settings(argv[1]);
    App app;
    FIX::FileStoreFactory store(settings);
    FIX::ScreenLogFactory log(false, false, false);
    FIX::SocketAcceptor acceptor(app, store, settings, log);
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
