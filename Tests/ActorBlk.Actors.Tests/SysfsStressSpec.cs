using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Sysfs;
using ActorBlk.Hardware.Topology;
using Akka.Actor;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// Issue 5 item 6: reading attributes while CPUs come and go and devices register and unregister
/// never deadlocks and never shows a half-built tree. Every snapshot a reader takes is whole:
/// each mq directory has its three files, the cpu lists of a snapshot cover every possible CPU
/// exactly once, and every path the snapshot lists can be read from it.
/// </summary>
public sealed class SysfsStressSpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(90);

    public SysfsStressSpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
    }

    private BlockLayer Layer => BlockLayer.Get(Sys);

    private DeviceOptions Options(string name) => new()
    {
        Name = name,
        Size = 16 << 20,
        MemoryBacked = true,
        SubmitQueues = 4,
        PollQueues = 0,
        CpuMapAlgorithm = CpuMapAlgorithm.Contiguous,
    };

    [Fact]
    public async Task Reads_during_remaps_and_registrations_see_whole_trees_and_never_block()
    {
        var stable = await Layer.CreateDeviceAsync(Options("stable"));
        using var done = new CancellationTokenSource();

        var hotplug = Task.Run(async () =>
        {
            for (var i = 0; i < 30; i++)
            {
                var cpu = 1 + (i % 3);
                await Layer.SetCpuOnlineAsync(cpu, online: false);
                await Layer.SetCpuOnlineAsync(cpu, online: true);
            }
        });
        var churn = Task.Run(async () =>
        {
            for (var i = 0; i < 25; i++)
            {
                var device = await Layer.CreateDeviceAsync(Options($"churn{i}"));
                await device.WriteAsync(0, new byte[4096]);
                Assert.Equal(0, await Layer.DestroyDeviceAsync(device.Name));
            }
        });
        var io = Task.Run(async () =>
        {
            var buffer = new byte[4096];
            var n = 0L;
            while (!done.IsCancellationRequested)
            {
                await stable.WriteAsync(n++ % 256 * 65536, buffer);
            }

            return n;
        });

        var sysfs = Sys.ActorSelection(Layer.Guardian.Path / Sysfs.ActorName);
        var snapshots = new long[2];
        var readers = Enumerable.Range(0, 2).Select(r => Task.Run(async () =>
        {
            while (!done.IsCancellationRequested)
            {
                var tree = stable.Attributes.Current!;
                CheckWhole(tree);
                snapshots[r]++;

                // The node-wide listing while devices come and go: a path that vanished between
                // listing and reading is ENOENT, never anything else.
                foreach (var path in Layer.ListAttributes("block/"))
                {
                    try
                    {
                        Assert.EndsWith("\n", Layer.ReadAttribute(path));
                    }
                    catch (AttributeException ex)
                    {
                        Assert.Equal(AttributeErrno.ENOENT, ex.Errno);
                    }
                }

                var reply = await sysfs.Ask<object>(new Sysfs.Read("block/stable/queue/nr_requests"), TimeSpan.FromSeconds(30));
                Assert.Equal(new Sysfs.Value("block/stable/queue/nr_requests", "64\n"), reply);
            }
        })).ToArray();

        await Task.WhenAll(hotplug, churn).WaitAsync(Bound);
        await done.CancelAsync();
        await Task.WhenAll(readers).WaitAsync(Bound);
        var ios = await io.WaitAsync(Bound);

        Assert.True(snapshots.All(s => s > 0));
        Assert.True(ios > 0);
        Assert.Equal(["stable"], Layer.Devices.Select(d => d.Name));
        Assert.Equal(61, (await Layer.SetCpuOnlineAsync(0, online: true)).Version);
        CheckWhole(stable.Attributes.Current!);
        Assert.Empty(Layer.ListAttributes("block/churn"));
    }

    private static void CheckWhole(AttributeTree tree)
    {
        var mq = tree.Paths.Where(p => p.StartsWith("block/stable/mq/", StringComparison.Ordinal))
            .GroupBy(p => p.Split('/')[3]).ToArray();
        Assert.NotEmpty(mq);
        var cpus = new List<int>();
        foreach (var dir in mq)
        {
            Assert.Equal(["cpu_list", "nr_reserved_tags", "nr_tags"], dir.Select(p => p.Split('/')[4]).Order(StringComparer.Ordinal));
            cpus.AddRange(tree.Read($"block/stable/mq/{dir.Key}/cpu_list").TrimEnd('\n').Split(", ").Select(int.Parse));
        }

        Assert.Equal([0, 1, 2, 3], cpus.Order());
        foreach (var path in tree.Paths)
        {
            Assert.True(tree.Read(path).Length < PageBuffer.PageSize);
        }
    }
}
