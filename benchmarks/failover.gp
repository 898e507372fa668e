# Leader kills under load, 3 oracles; written by nodepool bench --plot.
set terminal pngcairo size 1100,480 noenhanced
set output 'failover.png'
set title sprintf('nodepool failover: %d leader SIGKILLs, first grant after a median %.0f ms', 20, 696)
set grid
set xlabel 'seconds since the start'
set ylabel 'sessions started per second'
set yrange [0:*]
set key outside bottom center horizontal
set arrow from 1.338, graph 0 to 1.338, graph 1 nohead lc rgb '#d62728'
set arrow from 3.271, graph 0 to 3.271, graph 1 nohead lc rgb '#d62728'
set arrow from 5.227, graph 0 to 5.227, graph 1 nohead lc rgb '#d62728'
set arrow from 7.171, graph 0 to 7.171, graph 1 nohead lc rgb '#d62728'
set arrow from 9.096, graph 0 to 9.096, graph 1 nohead lc rgb '#d62728'
set arrow from 10.921, graph 0 to 10.921, graph 1 nohead lc rgb '#d62728'
set arrow from 12.727, graph 0 to 12.727, graph 1 nohead lc rgb '#d62728'
set arrow from 14.549, graph 0 to 14.549, graph 1 nohead lc rgb '#d62728'
set arrow from 16.578, graph 0 to 16.578, graph 1 nohead lc rgb '#d62728'
set arrow from 18.544, graph 0 to 18.544, graph 1 nohead lc rgb '#d62728'
set arrow from 20.287, graph 0 to 20.287, graph 1 nohead lc rgb '#d62728'
set arrow from 22.377, graph 0 to 22.377, graph 1 nohead lc rgb '#d62728'
set arrow from 24.469, graph 0 to 24.469, graph 1 nohead lc rgb '#d62728'
set arrow from 26.602, graph 0 to 26.602, graph 1 nohead lc rgb '#d62728'
set arrow from 28.564, graph 0 to 28.564, graph 1 nohead lc rgb '#d62728'
set arrow from 30.56, graph 0 to 30.56, graph 1 nohead lc rgb '#d62728'
set arrow from 32.586, graph 0 to 32.586, graph 1 nohead lc rgb '#d62728'
set arrow from 34.762, graph 0 to 34.762, graph 1 nohead lc rgb '#d62728'
set arrow from 36.811, graph 0 to 36.811, graph 1 nohead lc rgb '#d62728'
set arrow from 38.858, graph 0 to 38.858, graph 1 nohead lc rgb '#d62728'
plot 'failover_grants.dat' using 1:2 with steps lw 2 lc rgb '#1f77b4' title 'grants/s (red: a leader SIGKILLed)', \
     'failover_kills.dat' using ($3 >= 0 ? $3 : NaN):(0) with points pt 7 ps 1.2 lc rgb '#2ca02c' title 'first grant of the new leader'
