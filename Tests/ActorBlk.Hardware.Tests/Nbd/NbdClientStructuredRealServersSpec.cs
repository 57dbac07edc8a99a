using System.Diagnostics;
using System.Net;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Nbd;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// The NBD client driver's structured replies and base:allocation against real servers (nbdkit,
/// qemu-nbd on a sparse raw file), each on a Unix socket of its own: an imported device's map
/// shows the server's holes, reads through structured replies (qemu-nbd's OFFSET_HOLE chunks among
/// them) return the right bytes, our server re-exporting an imported device answers
/// <c>nbdinfo --map</c> with those holes, and a server that refuses structured replies
/// (<c>nbdkit --no-sr</c>) leaves the device as before: simple replies and no map. Before, the
/// client negotiated simple replies only and every imported device looked fully allocated.
/// </summary>
public sealed class NbdClientStructuredRealServersSpec : IDisposable
{
    private const long Size = 16 << 20;
    private const int Chunk = 64 << 10;
    private readonly string _dir = Directory.CreateTempSubdirectory("actorblk-sr-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [SkippableFact]
    public async Task An_imported_nbdkit_memory_device_maps_its_holes_and_reads_its_data()
    {
        Skip.IfNot(ExternalTool.Exists("nbdkit"), "nbdkit is not installed");
        await using var server = await ServerProcess.StartAsync(_dir, "nbdkit", socket => ["-f", "-U", socket, "memory", "16M"]);
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "kit0", Driver = "nbd", Uri = server.Uri }, CpuTopology.Simulated(2));
        var driver = (NbdClientDriver)device.Queue.Driver;
        Assert.True(driver.Connections.Single().Structured);
        Assert.True(driver.HasAllocationMap);
        var data = Filled(Chunk);
        await device.WriteAsync(1 << 20, data).AsTask().WaitAsync(Condition.Timeout);

        Assert.Equal([(0L, 1L << 20, false), (1L << 20, Chunk, true), ((1L << 20) + Chunk, Size - (1 << 20) - Chunk, false)], await MapAsync(driver, 0, Size));
        var back = new byte[2 * Chunk];
        Array.Fill(back, (byte)0xee);
        await device.ReadAsync((1 << 20) - Chunk, back).AsTask().WaitAsync(Condition.Timeout);
        Assert.All(back[..Chunk], b => Assert.Equal(0, b));
        Assert.Equal(data, back[Chunk..]);
    }

    // qemu-nbd answers a read over a hole of a sparse file with NBD_REPLY_TYPE_OFFSET_HOLE: the
    // buffer's old bytes there are zeroed.
    [SkippableFact]
    public async Task An_imported_sparse_raw_file_on_qemu_nbd_maps_its_holes_and_reads_holes_as_zeroes()
    {
        Skip.IfNot(ExternalTool.Exists("qemu-nbd"), "qemu-nbd is not installed");
        var image = Path.Combine(_dir, "sparse.raw");
        var data = Filled(Chunk);
        await using (var file = new FileStream(image, FileMode.CreateNew))
        {
            file.SetLength(Size);
            file.Position = 4 << 20;
            await file.WriteAsync(data);
        }

        await using var server = await ServerProcess.StartAsync(_dir, "qemu-nbd", socket => ["-t", "-k", socket, "-f", "raw", image]);
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "qemu0", Driver = "nbd", Uri = server.Uri }, CpuTopology.Simulated(2));
        var driver = (NbdClientDriver)device.Queue.Driver;
        Assert.True(driver.HasAllocationMap);

        Assert.Equal([(0L, 4L << 20, false), (4L << 20, Chunk, true), ((4L << 20) + Chunk, Size - (4 << 20) - Chunk, false)], await MapAsync(driver, 0, Size));
        var back = new byte[3 * Chunk];
        Array.Fill(back, (byte)0xee);
        await device.ReadAsync((4 << 20) - Chunk, back).AsTask().WaitAsync(Condition.Timeout);
        Assert.All(back[..Chunk], b => Assert.Equal(0, b));
        Assert.Equal(data, back[Chunk..(2 * Chunk)]);
        Assert.All(back[(2 * Chunk)..], b => Assert.Equal(0, b));
    }

    // Our server exporting the imported device answers block status from the remote map: nbdinfo
    // --map shows nbdkit's holes (it showed one data extent for the whole device).
    [SkippableFact]
    public async Task Our_server_re_exporting_an_imported_device_answers_nbdinfo_map_with_its_holes()
    {
        Skip.IfNot(ExternalTool.Exists("nbdkit") && ExternalTool.Exists("nbdinfo"), "nbdkit or nbdinfo is not installed");
        await using var kit = await ServerProcess.StartAsync(_dir, "nbdkit", socket => ["-f", "-U", socket, "memory", "16M"]);
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "kit0", Driver = "nbd", Uri = kit.Uri }, CpuTopology.Simulated(2));
        await device.WriteAsync(2 << 20, Filled(Chunk)).AsTask().WaitAsync(Condition.Timeout);
        await using var server = NbdServer.Start(new NbdDeviceList([device]), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0) });

        var map = await ExternalTool.RunAsync("nbdinfo", "--map", $"nbd://127.0.0.1:{server.LocalEndPoint.Port}/kit0");
        var extents = map.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Select(f => (long.Parse(f[0], System.Globalization.CultureInfo.InvariantCulture), long.Parse(f[1], System.Globalization.CultureInfo.InvariantCulture), f[3]))
            .ToArray();
        Assert.Equal([(0L, 2L << 20, "hole,zero"), (2L << 20, Chunk, "data"), ((2L << 20) + Chunk, Size - (2 << 20) - Chunk, "hole,zero")], extents);
    }

    // nbdkit --no-sr refuses NBD_OPT_STRUCTURED_REPLY: simple replies, no context, and a map that
    // cannot tell; reads and writes as before.
    [SkippableFact]
    public async Task A_server_that_refuses_structured_replies_serves_as_before_without_a_map()
    {
        Skip.IfNot(ExternalTool.Exists("nbdkit"), "nbdkit is not installed");
        await using var server = await ServerProcess.StartAsync(_dir, "nbdkit", socket => ["-f", "--no-sr", "-U", socket, "memory", "16M"]);
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "kit0", Driver = "nbd", Uri = server.Uri }, CpuTopology.Simulated(2));
        var driver = (NbdClientDriver)device.Queue.Driver;

        Assert.False(driver.Connections.Single().Structured);
        Assert.False(driver.HasAllocationMap);
        Assert.Null(await ((IAllocationMap)driver).GetExtentAsync(0, Size).AsTask().WaitAsync(Condition.Timeout));
        var data = Filled(Chunk);
        await device.WriteAsync(1 << 20, data).AsTask().WaitAsync(Condition.Timeout);
        var back = new byte[Chunk];
        await device.ReadAsync(1 << 20, back).AsTask().WaitAsync(Condition.Timeout);
        Assert.Equal(data, back);
    }

    // The extents from offset to offset + length, one question each, merged where neighbours agree.
    private static async Task<List<(long Offset, long Length, bool Data)>> MapAsync(IAllocationMap map, long offset, long length)
    {
        var extents = new List<(long Offset, long Length, bool Data)>();
        var end = offset + length;
        while (offset < end)
        {
            var extent = await map.GetExtentAsync(offset, end - offset).AsTask().WaitAsync(Condition.Timeout);
            Assert.NotNull(extent);
            Assert.InRange(extent.Value.Length, 1, end - offset);
            if (extents.Count > 0 && extents[^1].Data == extent.Value.Allocated)
            {
                extents[^1] = (extents[^1].Offset, extents[^1].Length + extent.Value.Length, extent.Value.Allocated);
            }
            else
            {
                extents.Add((offset, extent.Value.Length, extent.Value.Allocated));
            }

            offset += extent.Value.Length;
        }

        return extents;
    }

    private static byte[] Filled(int length)
    {
        var data = new byte[length];
        new Random(length).NextBytes(data);
        return data;
    }

    /// <summary>An NBD server process on a Unix socket in a spec's directory, killed at the end.</summary>
    /// <remarks>
    /// Started by <see cref="ProcessLauncher"/>: nbdkit sets <c>PR_SET_PDEATHSIG</c> even without
    /// <c>--exit-with-parent</c>, which fires when the thread that forked it ends, and these specs'
    /// code ran on threads that ended soon after: "nbdkit exited with 0 (143) before listening" or
    /// "Connection refused" in about one run of this class in three beside the other structured
    /// reply specs (leaving the option out, tried first, changed nothing).
    /// </remarks>
    private sealed class ServerProcess : IAsyncDisposable
    {
        private readonly Process _process;

        private ServerProcess(Process process, string socket)
        {
            _process = process;
            Uri = $"nbd+unix:///?socket={socket}";
        }

        public string Uri { get; }

        public static async Task<ServerProcess> StartAsync(string dir, string file, Func<string, string[]> args)
        {
            var socket = Path.Combine(dir, $"{file}-{Guid.NewGuid():N}.sock");
            var psi = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
            foreach (var a in args(socket))
            {
                psi.ArgumentList.Add(a);
            }

            var process = await ProcessLauncher.StartAsync(psi);
            process.ErrorDataReceived += (_, _) => { };
            process.OutputDataReceived += (_, _) => { };
            process.BeginErrorReadLine();
            process.BeginOutputReadLine();
            var server = new ServerProcess(process, socket);
            await Condition.EventuallyAsync(() => process.HasExited || UnixSockets.Listens(socket), $"{file} listens on its socket or exits");
            Assert.False(process.HasExited, $"{file} exited with {(process.HasExited ? process.ExitCode : 0)} before listening");
            return server;
        }

        public async ValueTask DisposeAsync()
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync();
            }

            _process.Dispose();
        }
    }
}
