#include "weights/state_dict_unpickler.hpp"

#include <fmt/format.h>

#include <cstring>
#include <map>
#include <memory>
#include <unordered_map>
#include <vector>

namespace difftrain::weights {
namespace {

struct Value;
using Ref = std::shared_ptr<Value>;

// The Python objects a state dict's pickle is made of. Shared by reference, as in Python: the memo
// and the stack may hold the same dict while SETITEMS fills it.
struct Value {
  enum class Kind {
    none,
    boolean,
    integer,
    real,
    string,
    tuple,
    list,
    dict,
    global,
    storage,
    tensor
  };
  Kind kind = Kind::none;
  int64_t integer = 0;
  double real = 0;
  std::string text;                          // a string; "module.name" of a global
  std::vector<Ref> items;                    // tuple, list
  std::vector<std::pair<Ref, Ref>> entries;  // dict, in insertion order
  at::Tensor tensor;                         // tensor; storage (1-D)
};

Ref make(Value::Kind kind) {
  auto v = std::make_shared<Value>();
  v->kind = kind;
  return v;
}

std::string describe(const Value& v) {
  switch (v.kind) {
    case Value::Kind::none:
      return "None";
    case Value::Kind::boolean:
      return "a bool";
    case Value::Kind::integer:
      return "an int";
    case Value::Kind::real:
      return "a float";
    case Value::Kind::string:
      return "a str";
    case Value::Kind::tuple:
      return "a tuple";
    case Value::Kind::list:
      return "a list";
    case Value::Kind::dict:
      return "a dict";
    case Value::Kind::global:
      return "the Python object " + v.text;
    case Value::Kind::storage:
      return "a storage";
    case Value::Kind::tensor:
      return "a tensor";
  }
  return "?";
}

// torch.save names a storage by its legacy typed class.
at::ScalarType storage_dtype(const std::string& global) {
  static const std::map<std::string, at::ScalarType> types{
      {"torch.FloatStorage", at::kFloat}, {"torch.DoubleStorage", at::kDouble},
      {"torch.HalfStorage", at::kHalf},   {"torch.BFloat16Storage", at::kBFloat16},
      {"torch.LongStorage", at::kLong},   {"torch.IntStorage", at::kInt},
      {"torch.ShortStorage", at::kShort}, {"torch.CharStorage", at::kChar},
      {"torch.ByteStorage", at::kByte},   {"torch.BoolStorage", at::kBool}};
  const auto it = types.find(global);
  if (it == types.end())
    throw WeightsError("holds a storage of type " + global + ", which difftrain does not read");
  return it->second;
}

// A pickle virtual machine for the opcodes of protocols 2 to 4 that a state dict uses.
class Unpickler {
 public:
  Unpickler(std::string_view data, const StorageLoader& load_storage)
      : data_(data), load_storage_(load_storage) {}

  Ref run() {
    while (true) {
      const uint8_t op = u8();
      if (op == '.') break;  // STOP
      step(op);
    }
    if (stack_.size() != 1)
      malformed("the stack holds " + std::to_string(stack_.size()) + " values at STOP");
    return stack_.back();
  }
  std::size_t consumed() const { return pos_; }  // the bytes up to and with STOP, after run()

 private:
  [[noreturn]] void malformed(const std::string& what) const {
    throw WeightsError(fmt::format("malformed pickle at byte {}: {}", pos_, what));
  }

  std::string_view take(std::size_t n) {
    if (n > data_.size() - pos_) malformed("it ends early (truncated?)");
    const std::string_view s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  uint8_t u8() { return static_cast<uint8_t>(take(1)[0]); }
  // Little-endian unsigned of n bytes (pickle's integer arguments).
  uint64_t le(std::size_t n) {
    const std::string_view s = take(n);
    uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i)
      v |= static_cast<uint64_t>(static_cast<uint8_t>(s[i])) << (8 * i);
    return v;
  }
  std::string line() {
    const std::size_t end = data_.find('\n', pos_);
    if (end == std::string_view::npos) malformed("a GLOBAL without its newline");
    std::string s(data_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return s;
  }

  void push(Ref v) { stack_.push_back(std::move(v)); }
  Ref pop() {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) malformed("pop from an empty stack");
    Ref v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  Ref& top() {
    if (stack_.empty()) malformed("empty stack");
    return stack_.back();
  }
  std::vector<Ref> pop_to_mark() {
    if (marks_.empty()) malformed("no MARK");
    const std::size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<Ref> items(std::make_move_iterator(stack_.begin() + static_cast<long>(mark)),
                           std::make_move_iterator(stack_.end()));
    stack_.resize(mark);
    return items;
  }
  void push_int(int64_t i) {
    Ref v = make(Value::Kind::integer);
    v->integer = i;
    push(v);
  }
  void push_string(std::string_view s) {
    Ref v = make(Value::Kind::string);
    v->text = s;
    push(v);
  }
  void push_tuple(std::vector<Ref> items) {
    Ref v = make(Value::Kind::tuple);
    v->items = std::move(items);
    push(v);
  }
  void push_global(std::string module, const std::string& name) {
    Ref v = make(Value::Kind::global);
    v->text = std::move(module) + "." + name;
    push(v);
  }
  void memo_put(uint64_t index) { memo_[index] = top(); }
  void memo_get(uint64_t index) {
    const auto it = memo_.find(index);
    if (it == memo_.end()) malformed("memo entry " + std::to_string(index) + " is unset");
    push(it->second);
  }
  void set_items(std::vector<Ref> kv) {
    Ref& d = top();
    if (d->kind != Value::Kind::dict) malformed("SETITEMS on " + describe(*d));
    if (kv.size() % 2) malformed("SETITEMS with an odd number of values");
    for (std::size_t i = 0; i < kv.size(); i += 2)
      d->entries.emplace_back(kv[i], kv[i + 1]);
  }

  void step(uint8_t op) {
    switch (op) {
      case 0x80:
        u8();
        return;  // PROTO
      case 0x95:
        le(8);
        return;  // FRAME
      case '(':
        marks_.push_back(stack_.size());
        return;  // MARK
      case 'N':
        push(make(Value::Kind::none));
        return;
      case 0x88:    // NEWTRUE
      case 0x89: {  // NEWFALSE
        Ref v = make(Value::Kind::boolean);
        v->integer = op == 0x88;
        push(v);
        return;
      }
      case 'K':
        push_int(static_cast<int64_t>(le(1)));
        return;  // BININT1
      case 'M':
        push_int(static_cast<int64_t>(le(2)));
        return;  // BININT2
      case 'J':
        push_int(static_cast<int32_t>(le(4)));
        return;     // BININT
      case 0x8a: {  // LONG1
        const std::size_t n = u8();
        if (n > 8) malformed("an integer of " + std::to_string(n) + " bytes");
        uint64_t v = n ? le(n) : 0;
        if (n && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);  // sign
        push_int(static_cast<int64_t>(v));
        return;
      }
      case 'G': {  // BINFLOAT, big-endian
        const std::string_view s = take(8);
        uint64_t bits = 0;
        for (char c : s)
          bits = bits << 8 | static_cast<uint8_t>(c);
        Ref v = make(Value::Kind::real);
        std::memcpy(&v->real, &bits, sizeof bits);
        push(v);
        return;
      }
      case 'X':
        push_string(take(le(4)));
        return;  // BINUNICODE
      case 0x8c:
        push_string(take(u8()));
        return;  // SHORT_BINUNICODE
      case 0x8d:
        push_string(take(le(8)));
        return;  // BINUNICODE8
      case ')':
        push_tuple({});
        return;  // EMPTY_TUPLE
      case 't':
        push_tuple(pop_to_mark());
        return;   // TUPLE
      case 0x85:  // TUPLE1 .. TUPLE3
      case 0x86:
      case 0x87: {
        std::vector<Ref> items(op - 0x84);
        for (auto it = items.rbegin(); it != items.rend(); ++it)
          *it = pop();
        push_tuple(std::move(items));
        return;
      }
      case ']':
        push(make(Value::Kind::list));
        return;    // EMPTY_LIST
      case 'a': {  // APPEND
        Ref v = pop();
        if (top()->kind != Value::Kind::list) malformed("APPEND to " + describe(*top()));
        top()->items.push_back(v);
        return;
      }
      case 'e': {  // APPENDS
        std::vector<Ref> items = pop_to_mark();
        if (top()->kind != Value::Kind::list) malformed("APPENDS to " + describe(*top()));
        top()->items.insert(top()->items.end(), items.begin(), items.end());
        return;
      }
      case '}':
        push(make(Value::Kind::dict));
        return;    // EMPTY_DICT
      case 's': {  // SETITEM
        Ref v = pop();
        Ref k = pop();
        set_items({k, v});
        return;
      }
      case 'u':
        set_items(pop_to_mark());
        return;    // SETITEMS
      case 'c': {  // GLOBAL
        std::string module = line();
        push_global(std::move(module), line());
        return;
      }
      case 0x93: {  // STACK_GLOBAL
        Ref name = pop();
        Ref module = pop();
        push_global(module->text, name->text);
        return;
      }
      case 'q':
        memo_put(le(1));
        return;  // BINPUT
      case 'r':
        memo_put(le(4));
        return;  // LONG_BINPUT
      case 0x94:
        memo_put(memo_.size());
        return;  // MEMOIZE
      case 'h':
        memo_get(le(1));
        return;  // BINGET
      case 'j':
        memo_get(le(4));
        return;  // LONG_BINGET
      case 'Q':
        push(storage(pop()));
        return;    // BINPERSID
      case 'R': {  // REDUCE
        Ref args = pop();
        Ref callable = pop();
        push(reduce(*callable, *args));
        return;
      }
      case 'b':  // BUILD
        // Sets an OrderedDict's attributes: a state dict's _metadata (module versions), not
        // weights, so it is dropped.
        pop();
        if (top()->kind != Value::Kind::dict) malformed("BUILD on " + describe(*top()));
        return;
      default:
        throw WeightsError(fmt::format(
            "uses pickle opcode 0x{:02x} at byte {}, which a state dict does not", op, pos_ - 1));
    }
  }

  // ('storage', torch.FloatStorage, key, location, numel): torch.save's persistent id; the legacy
  // format adds a sixth, view_metadata, None unless the storage is a view of another.
  Ref storage(const Ref& pid) {
    const auto& t = pid->items;
    if (pid->kind != Value::Kind::tuple || (t.size() != 5 && t.size() != 6) ||
        t[0]->text != "storage" || t[1]->kind != Value::Kind::global ||
        t[2]->kind != Value::Kind::string || t[4]->kind != Value::Kind::integer)
      throw WeightsError("holds a persistent object that is not a tensor storage");
    if (t.size() == 6 && t[5]->kind != Value::Kind::none)
      throw WeightsError(
          "holds a view of a storage (the legacy format's view_metadata), which "
          "difftrain does not read");
    const at::ScalarType dtype = storage_dtype(t[1]->text);
    auto it = storages_.find(t[2]->text);
    if (it == storages_.end())
      it = storages_.emplace(t[2]->text, load_storage_(t[2]->text, dtype, t[4]->integer)).first;
    Ref v = make(Value::Kind::storage);
    v->tensor = it->second;
    return v;
  }

  static std::vector<int64_t> ints(const Value& tuple, const char* what) {
    std::vector<int64_t> r;
    if (tuple.kind != Value::Kind::tuple)
      throw WeightsError(std::string("a tensor's ") + what + " is not a tuple");
    for (const Ref& i : tuple.items) {
      if (i->kind != Value::Kind::integer)
        throw WeightsError(std::string("a tensor's ") + what + " holds a non-integer");
      r.push_back(i->integer);
    }
    return r;
  }

  // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
  static Ref rebuild_tensor(const Value& args) {
    const auto& a = args.items;
    if (a.size() < 4 || a[0]->kind != Value::Kind::storage || a[1]->kind != Value::Kind::integer)
      throw WeightsError("holds a tensor whose arguments are not (storage, offset, size, stride)");
    const at::Tensor& storage = a[0]->tensor;
    const std::vector<int64_t> size = ints(*a[2], "size"), stride = ints(*a[3], "stride");
    const int64_t offset = a[1]->integer;
    if (size.size() != stride.size())
      throw WeightsError("holds a tensor whose size and stride differ in length");
    int64_t last = offset;  // the last element the view reaches
    bool empty = false;
    for (std::size_t i = 0; i < size.size(); ++i) {
      if (size[i] < 0 || stride[i] < 0)
        throw WeightsError("holds a tensor with a negative size or stride");
      empty |= size[i] == 0;
      last += (size[i] - 1) * stride[i];
    }
    if (offset < 0 || (!empty && last >= storage.numel()))
      throw WeightsError(
          fmt::format("holds a tensor of size {} that reaches past its storage of {} elements",
                      shape_string(size), storage.numel()));
    Ref v = make(Value::Kind::tensor);
    v->tensor = storage.as_strided(size, stride, offset);
    return v;
  }

  static Ref reduce(const Value& callable, const Value& args) {
    if (callable.kind != Value::Kind::global || args.kind != Value::Kind::tuple)
      throw WeightsError("calls " + describe(callable) + ", which a state dict does not");
    const std::string& f = callable.text;
    if (f == "collections.OrderedDict" && args.items.empty()) return make(Value::Kind::dict);
    if (f == "torch._utils._rebuild_tensor_v2") return rebuild_tensor(args);
    // torch.save of nn.Parameters (a dict of model.named_parameters()).
    if (f == "torch._utils._rebuild_parameter" && !args.items.empty() &&
        args.items[0]->kind == Value::Kind::tensor)
      return args.items[0];
    throw WeightsError("holds a Python object built by " + f +
                       ", not a plain state dict (a dict of names to tensors)");
  }

  std::string_view data_;
  std::size_t pos_ = 0;
  const StorageLoader& load_storage_;
  std::vector<Ref> stack_;
  std::vector<std::size_t> marks_;  // stack depths at each open MARK
  std::unordered_map<uint64_t, Ref> memo_;
  std::map<std::string, at::Tensor> storages_;  // by record key: tensors may share one
};

}  // namespace

namespace {

StateDict state_dict_of(const Ref& root) {
  if (root->kind != Value::Kind::dict)
    throw WeightsError("holds " + describe(*root) +
                       ", not a state dict (a dict of parameter names to tensors)");
  StateDict state;
  for (const auto& [key, value] : root->entries) {
    if (key->kind != Value::Kind::string)
      throw WeightsError("holds a dict with " + describe(*key) + " as a key, not a state dict");
    if (value->kind == Value::Kind::dict)
      throw WeightsError(fmt::format(
          "holds a dict whose entry '{}' is a dict: a training checkpoint rather than a state "
          "dict? Save that entry alone: torch.save(ckpt['{}'], 'weights.pt')",
          key->text, key->text));
    if (value->kind != Value::Kind::tensor)
      throw WeightsError(fmt::format("holds a dict whose entry '{}' is {}: not a state dict",
                                     key->text, describe(*value)));
    state.push_back({key->text, value->tensor});
  }
  return state;
}

}  // namespace

StateDict unpickle_state_dict(std::string_view pickle, const StorageLoader& load_storage) {
  return state_dict_of(Unpickler(pickle, load_storage).run());
}

StateDict unpickle_legacy_state_dict(std::string_view file) {
  if (!file.starts_with(kLegacyMagicPickle))
    throw WeightsError("does not begin with the legacy format's magic number");
  std::size_t pos = kLegacyMagicPickle.size();
  const StorageLoader no_storage = [](const std::string&, at::ScalarType, int64_t) -> at::Tensor {
    throw WeightsError("holds a storage outside the state dict's pickle");
  };
  const auto next_pickle = [&](const StorageLoader& load_storage) {
    Unpickler unpickler(file.substr(pos), load_storage);
    const Ref value = unpickler.run();
    pos += unpickler.consumed();
    return value;
  };

  const Ref version = next_pickle(no_storage);
  if (version->kind != Value::Kind::integer || version->integer != 1001)
    throw WeightsError(
        "holds a legacy format version other than 1001, which difftrain does not read");
  const Ref system = next_pickle(no_storage);
  for (const auto& [key, value] : system->entries)
    if (key->text == "little_endian" && value->kind == Value::Kind::boolean && !value->integer)
      throw WeightsError("was written on a big-endian machine, which difftrain does not read");
  // The storages come after the pickles: allocated while the state dict's pickle is read (its
  // tensors are views of them), filled once their data is reached.
  std::map<std::string, at::Tensor> storages;
  const Ref root = next_pickle([&](const std::string& key, at::ScalarType dtype, int64_t numel) {
    return storages.emplace(key, at::empty({numel}, at::TensorOptions().dtype(dtype)))
        .first->second;
  });
  const Ref keys = next_pickle(no_storage);
  if (keys->kind != Value::Kind::list)
    throw WeightsError("holds " + describe(*keys) + " where the legacy format lists its storages");
  for (const Ref& key : keys->items) {
    const auto it = storages.find(key->text);
    if (it == storages.end())
      throw WeightsError("lists a storage '" + key->text + "' that no tensor uses");
    int64_t numel = 0;
    if (file.size() - pos < sizeof numel)
      throw WeightsError("ends early, in storage '" + key->text + "' (truncated?)");
    std::memcpy(&numel, file.data() + pos, sizeof numel);
    pos += sizeof numel;
    at::Tensor& t = it->second;
    if (numel != t.numel())
      throw WeightsError(fmt::format("storage '{}' holds {} elements, not the {} its tensors use",
                                     key->text, numel, t.numel()));
    if (file.size() - pos < t.nbytes())
      throw WeightsError("ends early, in storage '" + key->text + "' (truncated?)");
    std::memcpy(t.data_ptr(), file.data() + pos, t.nbytes());
    pos += t.nbytes();
  }
  if (storages.size() != keys->items.size())
    throw WeightsError("lists fewer storages than its tensors use");
  return state_dict_of(root);
}

}  // namespace difftrain::weights
