using System.CommandLine;
using ActorBlk.Samples.MirrorJournal;

// usage: MirrorJournal [options]   (--help lists them)
// Node 1 of a 2-node cluster: keeps an append-only journal on a mirror over a local file leg and
// a leg on the second node, reports progress, and at the end verifies every record on both legs.
var config = new Option<string?>("--config") { HelpName = "PATH", Description = "the cluster's node configuration (default: ./hocon.conf, else the one beside this program)" };
var port = new Option<int>("--port") { HelpName = "N", DefaultValueFactory = _ => 4053, Description = "this node's remoting port, 0 for any free one" };
var dir = new Option<string>("--dir") { HelpName = "DIR", DefaultValueFactory = _ => "/var/tmp/mirror-journal", Description = "where the local leg's file (leg0.img) and the second node's configuration (node2.conf) go" };
var leg = new Option<string?>("--leg") { HelpName = "NAME[@HOST:PORT]", Description = "the second leg: a device of the second node (default: journal-leg1; in chaos mode the child node's)" };
var legMib = new Option<int>("--leg-mib") { HelpName = "N", DefaultValueFactory = _ => 64, Description = "size of each leg's file in MiB" };
var regionKib = new Option<int>("--region-kib") { HelpName = "N", DefaultValueFactory = _ => 512, Description = "bytes of journal per bit of the write-intent bitmap, in KiB (a power of two, 64 or more)" };
var records = new Option<long>("--records") { HelpName = "N", DefaultValueFactory = _ => 6000, Description = "records to append (stops earlier on Ctrl-C or when the journal is full); in chaos mode the phases decide" };
var rate = new Option<double>("--rate") { HelpName = "N", DefaultValueFactory = _ => 100, Description = "records per second, 0 for as fast as it can" };
var depth = new Option<int>("--depth") { HelpName = "N", DefaultValueFactory = _ => 1, Description = "appends in flight" };
var chaos = new Option<bool>("--chaos") { Description = "start the second node as a child process, kill -9 it while the journal runs, start it again, then verify" };
var actorblk = new Option<string?>("--actorblk") { HelpName = "PATH", Description = "actorblk.dll for --chaos and the printed command (default: beside this program, else the repository's Host build)" };
var killAt = new Option<long>("--kill-at") { HelpName = "N", DefaultValueFactory = _ => 300, Description = "chaos: records appended before the kill" };
var degradedRecords = new Option<long>("--degraded-records") { HelpName = "N", DefaultValueFactory = _ => 300, Description = "chaos: records appended while degraded before the restart (at least)" };
var afterRecords = new Option<long>("--after-records") { HelpName = "N", DefaultValueFactory = _ => 200, Description = "chaos: records appended after the resync" };
var patience = new Option<int>("--patience") { HelpName = "SECONDS", DefaultValueFactory = _ => 300, Description = "longest wait for the second node, a state change of the mirror, or the resync at the end" };
var logLevel = new Option<string>("--log-level") { HelpName = "error|warning|information", DefaultValueFactory = _ => "error", Description = "the node's own log (Akka and ActorBlk) on stderr from this level" };
logLevel.AcceptOnlyFromAmong("error", "warning", "information");
var interval = new Option<double>("--interval") { HelpName = "SECONDS", DefaultValueFactory = _ => 1, Description = "seconds between progress lines" };

var root = new RootCommand("Keeps a checksummed append-only journal on a mirror over a local leg and a leg on a second node, survives the loss of that node, resyncs it, and verifies every record on both legs.")
{
    config, port, dir, leg, legMib, regionKib, records, rate, depth, chaos, actorblk, killAt, degradedRecords, afterRecords, patience, interval, logLevel,
};
root.SetAction(async (parse, _) =>
{
    var options = new JournalOptions
    {
        Config = parse.GetValue(config),
        Port = parse.GetValue(port),
        Dir = Path.GetFullPath(parse.GetValue(dir)!),
        Leg = parse.GetValue(leg),
        LegBytes = (long)parse.GetValue(legMib) << 20,
        RegionBytes = (long)parse.GetValue(regionKib) << 10,
        Records = parse.GetValue(records),
        Rate = parse.GetValue(rate),
        Depth = parse.GetValue(depth),
        Chaos = parse.GetValue(chaos),
        ActorBlk = parse.GetValue(actorblk),
        KillAt = parse.GetValue(killAt),
        DegradedRecords = parse.GetValue(degradedRecords),
        AfterRecords = parse.GetValue(afterRecords),
        Patience = TimeSpan.FromSeconds(parse.GetValue(patience)),
        Interval = TimeSpan.FromSeconds(parse.GetValue(interval)),
        LogLevel = Enum.Parse<Serilog.Events.LogEventLevel>(parse.GetValue(logLevel)!, ignoreCase: true),
    };
    if (options.Problem() is { } problem)
    {
        Console.Error.WriteLine($"MirrorJournal: {problem}");
        return 2;
    }

    return await new JournalRun(options, Console.Out).RunAsync();
});

// A usage error exits 2, as the sample's own option checks do (1 is "records NOT verified").
var parsed = root.Parse(args);
if (parsed.Errors.Count > 0)
{
    foreach (var error in parsed.Errors)
    {
        Console.Error.WriteLine($"MirrorJournal: {error.Message}");
    }

    Console.Error.WriteLine("MirrorJournal: --help lists the options.");
    return 2;
}

// Ctrl-C is the run's own (it stops the journal, then verifies), not System.CommandLine's.
return await parsed.InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = null });
